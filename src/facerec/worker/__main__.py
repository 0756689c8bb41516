"""`python -m facerec.worker ...`: the same as `facerec worker ...` (for launching by interpreter path)."""

from facerec.cli.worker import worker

if __name__ == "__main__":
    worker(prog_name="python -m facerec.worker")
