"""Recognition core: image decoding, FaceNet weights, the batched recognizer and galleries (imports torch)."""
