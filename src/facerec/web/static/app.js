// The facerec page: recognize a photo (POST /v1/recognitions), manage enrolled people (/v1/people) and compare
// two photos (POST /v1/verifications).
// Plain browser JavaScript, no build step, no third-party code: everything is served by the app itself.
"use strict";

const RECOGNIZE_FAILURES = {
  400: "That file is empty or did not arrive complete. Please choose it again.",
  413: "That photo is too large. Please choose a smaller one.",
  415: "That file is not an image we can read.",
  422: "Please choose a photo first.",
  502: "The service could not process that photo. Please try another one.",
  503: "The service is busy right now. Please try again in a moment.",
  504: "That took too long. Please try again.",
};

const ENROLL_FAILURES = {
  413: "Those photos are too large to send together. Try fewer or smaller photos.",
  415: "One of those files is not an image we can read.",
  503: "The service is busy right now. Please try again in a moment.",
  504: "That took too long. Please try again.",
};

const COMPARE_FAILURES = {
  400: "One of those files is empty or did not arrive complete. Please choose it again.",
  413: "Those photos are too large to send together. Please choose smaller ones.",
  415: "One of those files is not an image we can read.",
  502: "The service could not process those photos. Please try other ones.",
  503: "The service is busy right now. Please try again in a moment.",
  504: "That took too long. Please try again.",
};

const KEY_NEEDED = "This server needs an API key for that. Enter it in the box at the top of the page, then try again.";
for (const failures of [RECOGNIZE_FAILURES, ENROLL_FAILURES, COMPARE_FAILURES]) failures[401] = KEY_NEEDED;

// The API key, when the server asks for one: kept in this tab's session storage only (gone when the tab
// closes, never sent anywhere but this server's own API).
const KEY_STORAGE = "facerec.apiKey";

function storedKey() {
  try {
    return window.sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null; // storage disabled: the key cannot be kept
  }
}

// `fetch` for this server's API: sends the key when one is set, and asks for one on 401.
async function apiFetch(url, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = storedKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const response = await fetch(url, { ...options, headers });
  if (response.status === 401) {
    askForKey(key ? "That key was not accepted (wrong, revoked, or without the right role). Enter another one." : "This server needs an API key.");
  }
  return response;
}

function askForKey(message) {
  $("key-panel").hidden = false;
  setStatus($("key-status"), message, "warning");
}

function setUpKey() {
  const panel = $("key-panel");
  const input = $("api-key");
  panel.hidden = !storedKey();
  if (storedKey()) setStatus($("key-status"), "A key is set for this tab.", "info");
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) {
      setStatus($("key-status"), "Please paste the key first.", "error");
      input.focus();
      return;
    }
    try {
      window.sessionStorage.setItem(KEY_STORAGE, key);
    } catch {
      setStatus($("key-status"), "This browser does not let the page keep the key.", "error");
      return;
    }
    input.value = "";
    setStatus($("key-status"), "Key set for this tab only. Try again.", "success");
    refreshPeople();
  });
  $("key-forget").addEventListener("click", () => {
    try {
      window.sessionStorage.removeItem(KEY_STORAGE);
    } catch {
      // nothing was kept
    }
    setStatus($("key-status"), "Key forgotten.", "info");
  });
}

// How many candidates the page asks for per face.
const TOP_K = 3;

const UNREACHABLE = "Could not reach the service. Check your connection and try again.";

const $ = (id) => document.getElementById(id);

function setStatus(element, message, kind = "info") {
  element.textContent = message;
  element.dataset.kind = kind;
}

function formatBytes(bytes) {
  if (bytes >= 1024 * 1024) return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
  if (bytes >= 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${bytes} bytes`;
}

function formatSeconds(seconds) {
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(2)} s`;
}

function plural(count, word, many = `${word}s`) {
  return `${count} ${count === 1 ? word : many}`;
}

// The limit is written into the page by the server, so an oversized photo is refused before it is sent
// (the server would cut the upload off, which a browser reports as a network error, not as a 413).
function maxUploadBytes() {
  const value = Number.parseInt(document.body.dataset.maxUploadBytes, 10);
  return Number.isFinite(value) && value > 0 ? value : null;
}

async function serverMessage(response) {
  try {
    const body = await response.json();
    return body && body.error && typeof body.error.message === "string" ? body.error.message : null;
  } catch {
    return null;
  }
}

function failureMessage(table, status, retryAfter) {
  let message = table[status] || `Something went wrong (HTTP ${status}). Please try again.`;
  const seconds = Number.parseInt(retryAfter || "", 10);
  if (status === 503 && Number.isFinite(seconds) && seconds > 0) {
    message = `The service is busy right now. Please try again in ${plural(seconds, "second")}.`;
  }
  return message;
}

// ---- Recognize -------------------------------------------------------------------------------------------

const recognizer = {
  sequence: 0, // a newer choice wins: answers to older uploads are dropped
  settled: 0, // the last sequence whose request came back (answer or error)
  previewUrl: null,
};

function showPreview(file) {
  const photo = $("recognize-photo");
  if (recognizer.previewUrl) URL.revokeObjectURL(recognizer.previewUrl);
  recognizer.previewUrl = URL.createObjectURL(file);
  photo.src = recognizer.previewUrl;
  // Resolves false for formats the browser cannot show (e.g. TIFF): the answer is still worth showing.
  return photo.decode().then(
    () => true,
    () => false,
  );
}

function placeBox(box, photo, overlay = $("face-box")) {
  const width = photo.naturalWidth;
  const height = photo.naturalHeight;
  if (!box || !width || !height) {
    overlay.hidden = true;
    return;
  }
  // Percentages of the original size: the overlay then follows the photo at any displayed size.
  const clamp = (value) => Math.min(100, Math.max(0, value));
  const left = clamp((box.x1 / width) * 100);
  const top = clamp((box.y1 / height) * 100);
  overlay.style.left = `${left}%`;
  overlay.style.top = `${top}%`;
  overlay.style.width = `${clamp((box.x2 / width) * 100) - left}%`;
  overlay.style.height = `${clamp((box.y2 / height) * 100) - top}%`;
  overlay.hidden = false;
}

function sameBox(a, b) {
  return Boolean(a && b) && a.x1 === b.x1 && a.y1 === b.y1 && a.x2 === b.x2 && a.y2 === b.y2;
}

function describeFace(face) {
  return typeof face.distance === "number" ? `${face.name} (${face.distance.toFixed(3)})` : face.name;
}

function showFaces(answer, photo, previewShown) {
  const faces = Array.isArray(answer.faces) ? answer.faces : [];
  const candidates = Array.isArray(answer.candidates) ? answer.candidates : [];
  $("candidates-block").hidden = candidates.length === 0;
  fillList($("result-candidates"), candidates, (candidate) => `${candidate.name}: ${candidate.distance.toFixed(3)}`);
  // Only worth a list when there is more than the subject's face.
  $("faces-block").hidden = faces.length < 2;
  fillList($("result-faces"), faces.length < 2 ? [] : faces, (face) => {
    const nearest = (face.candidates || []).map((c) => `${c.name} ${c.distance.toFixed(3)}`).join(", ");
    const subject = sameBox(face.box, answer.box) ? " (the main face)" : "";
    return `${describeFace(face)}${subject}${nearest ? ` — nearest: ${nearest}` : ""}`;
  });
  // The subject keeps the solid box; every other face gets a dashed one.
  const others = previewShown ? faces.filter((face) => !sameBox(face.box, answer.box)) : [];
  $("other-faces").replaceChildren(
    ...others.map((face) => {
      const overlay = document.createElement("div");
      overlay.className = "face-box other";
      overlay.title = describeFace(face);
      placeBox(face.box, photo, overlay);
      return overlay;
    }),
  );
}

function showAnswer(answer, previewShown) {
  const photo = $("recognize-photo");
  $("recognize-result").hidden = false;
  showFaces(answer, photo, previewShown);
  photo.hidden = !previewShown;
  $("result-name").textContent = answer.no_face ? "No face" : answer.name;
  $("result-distance").textContent = typeof answer.distance === "number" ? answer.distance.toFixed(3) : "—";
  const took = formatSeconds(answer.timings.total_s);
  $("result-time").textContent = answer.timings.cold_start ? `${took} (including starting the model)` : took;
  const status = $("recognize-status");
  if (answer.no_face) {
    placeBox(null, photo);
    photo.alt = "The photo you chose; no face was found in it";
    setStatus(status, "No face found in this photo.", "warning");
    return;
  }
  placeBox(previewShown ? answer.box : null, photo);
  if (answer.unknown) {
    photo.alt = "The photo you chose, with a box around a face that matches nobody enrolled";
    setStatus(status, "This face does not match anyone enrolled.", "warning");
  } else {
    photo.alt = `The photo you chose, with a box around the face of ${answer.name}`;
    setStatus(status, `Recognized: ${answer.name}.`, "success");
  }
}

function showRecognizeFailure(message) {
  $("recognize-result").hidden = true;
  setStatus($("recognize-status"), message, "error");
}

// After a pause the workers have stopped: the first answer waits for one to start (load the model).
async function sayWhenStarting(sequence, fileName) {
  let workers;
  try {
    const response = await fetch("/v1/workers");
    if (!response.ok) return;
    workers = await response.json();
  } catch {
    return;
  }
  if (sequence === recognizer.sequence && workers.running === 0 && recognizer.settled !== sequence) {
    setStatus($("recognize-status"), `Starting the model… then recognizing ${fileName}.`, "busy");
  }
}

async function recognize(file) {
  const sequence = ++recognizer.sequence;
  const limit = maxUploadBytes();
  if (limit !== null && file.size > limit) {
    showRecognizeFailure(
      `That photo is too large (${formatBytes(file.size)}). Please choose one under ${formatBytes(limit)}.`,
    );
    return;
  }
  setStatus($("recognize-status"), `Recognizing ${file.name}…`, "busy");
  sayWhenStarting(sequence, file.name);
  const preview = showPreview(file);
  const form = new FormData();
  form.append("inputFile", file, file.name);
  let response;
  try {
    response = await apiFetch(`/v1/recognitions?top_k=${TOP_K}`, { method: "POST", body: form });
    recognizer.settled = sequence;
  } catch {
    recognizer.settled = sequence;
    if (sequence === recognizer.sequence) showRecognizeFailure(UNREACHABLE);
    return;
  }
  if (sequence !== recognizer.sequence) return;
  if (!response.ok) {
    showRecognizeFailure(failureMessage(RECOGNIZE_FAILURES, response.status, response.headers.get("Retry-After")));
    return;
  }
  const answer = await response.json();
  const previewShown = await preview;
  if (sequence === recognizer.sequence) showAnswer(answer, previewShown);
}

function setUpRecognize() {
  const input = $("recognize-file");
  const zone = $("drop-zone");
  input.addEventListener("change", () => {
    if (input.files.length > 0) recognize(input.files[0]);
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) recognize(file);
  });
  // A photo dropped beside the zone must not navigate away from the page.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
}

// ---- Compare two photos ----------------------------------------------------------------------------------

const comparison = { sequence: 0 };

function showCompareFailure(message) {
  $("compare-result").hidden = true;
  setStatus($("compare-status"), message, "error");
}

async function compare(event) {
  event.preventDefault();
  const first = $("compare-file1").files[0];
  const second = $("compare-file2").files[0];
  if (!first || !second) {
    showCompareFailure("Please choose two photos to compare.");
    $(first ? "compare-file2" : "compare-file1").focus();
    return;
  }
  const limit = maxUploadBytes();
  if (limit !== null && first.size + second.size > limit) {
    showCompareFailure(`Those photos are too large together. Please keep them under ${formatBytes(limit)}.`);
    return;
  }
  const sequence = ++comparison.sequence;
  const form = new FormData();
  form.append("image1", first, first.name);
  form.append("image2", second, second.name);
  const button = $("compare-submit");
  button.disabled = true;
  setStatus($("compare-status"), "Comparing…", "busy");
  let response;
  try {
    response = await apiFetch("/v1/verifications", { method: "POST", body: form });
  } catch {
    if (sequence === comparison.sequence) showCompareFailure(UNREACHABLE);
    return;
  } finally {
    button.disabled = false;
  }
  if (sequence !== comparison.sequence) return;
  if (!response.ok) {
    const fallback = failureMessage(COMPARE_FAILURES, response.status, response.headers.get("Retry-After"));
    const body = await response.json().catch(() => null);
    if (body && body.error && body.error.code === "no_face") {
      const which = /image2/.test(body.error.message) ? "second" : "first";
      showCompareFailure(`No face found in the ${which} photo.`);
      return;
    }
    showCompareFailure(COMPARE_FAILURES[response.status] ? fallback : (body && body.error && body.error.message) || fallback);
    return;
  }
  const answer = await response.json();
  $("compare-result").hidden = false;
  $("compare-verdict").textContent = answer.same ? "Same person" : "Different people";
  $("compare-distance").textContent = answer.distance.toFixed(3);
  $("compare-threshold").textContent = answer.threshold.toFixed(3);
  setStatus($("compare-status"), answer.same ? "Same person." : "Different people.", answer.same ? "success" : "warning");
}

function setUpCompare() {
  $("compare-form").addEventListener("submit", compare);
  for (const [zoneId, inputId] of [
    ["compare-zone1", "compare-file1"],
    ["compare-zone2", "compare-file2"],
  ]) {
    const zone = $(zoneId);
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      if (event.dataTransfer && event.dataTransfer.files.length > 0) $(inputId).files = event.dataTransfer.files;
    });
  }
}

// ---- Enroll and people -----------------------------------------------------------------------------------

function personUrl(name) {
  return `/v1/people/${encodeURIComponent(name)}`;
}

function fillList(list, items, describe) {
  list.replaceChildren(
    ...items.map((item) => {
      const entry = document.createElement("li");
      entry.textContent = describe(item);
      return entry;
    }),
  );
}

function showEnrollment(outcome) {
  $("enroll-outcome").hidden = false;
  fillList($("enroll-used"), outcome.used.length ? outcome.used : ["none"], (name) => name);
  fillList(
    $("enroll-rejected"),
    outcome.rejected.length ? outcome.rejected : [{ filename: "none", reason: "" }],
    (item) => (item.reason ? `${item.filename}: ${item.reason}` : item.filename),
  );
  const summary = outcome.used.length
    ? `Enrolled ${outcome.person} with ${plural(outcome.used.length, "photo")}.`
    : `No photos of ${outcome.person} could be used.`;
  const rejected = outcome.rejected.length ? ` ${plural(outcome.rejected.length, "photo")} rejected.` : "";
  setStatus($("enroll-status"), summary + rejected, outcome.used.length ? "success" : "warning");
}

async function enroll(event) {
  event.preventDefault();
  const name = $("enroll-name").value.trim();
  const photos = Array.from($("enroll-photos").files);
  const status = $("enroll-status");
  if (!name) {
    setStatus(status, "Please type the person's name.", "error");
    $("enroll-name").focus();
    return;
  }
  if (photos.length === 0) {
    setStatus(status, "Please choose at least one photo.", "error");
    $("enroll-photos").focus();
    return;
  }
  const form = new FormData();
  for (const photo of photos) form.append("photos", photo, photo.name);
  const button = $("enroll-submit");
  button.disabled = true;
  setStatus(status, `Enrolling ${name} with ${plural(photos.length, "photo")}…`, "busy");
  try {
    const response = await apiFetch(`${personUrl(name)}/photos`, { method: "POST", body: form });
    if (!response.ok) {
      const fallback = failureMessage(ENROLL_FAILURES, response.status, response.headers.get("Retry-After"));
      // The server's own words explain enrollment refusals (e.g. an unusable name) better than a generic line.
      const message = ENROLL_FAILURES[response.status] ? fallback : (await serverMessage(response)) || fallback;
      setStatus(status, message, "error");
      return;
    }
    showEnrollment(await response.json());
    $("enroll-photos").value = "";
    await refreshPeople();
  } catch {
    setStatus(status, UNREACHABLE, "error");
  } finally {
    button.disabled = false;
  }
}

function personEntry(person) {
  const entry = document.createElement("li");
  const label = document.createElement("span");
  label.className = "person-name";
  label.textContent = person.name;
  const count = document.createElement("span");
  count.className = "person-photos";
  if (person.read_only) {
    // From the --gallery file: the workers know them, but only `facerec enroll` can change that file.
    count.textContent = "from the gallery file";
    entry.dataset.source = person.source;
    entry.append(label, count);
    return entry;
  }
  count.textContent = plural(person.photos, "photo");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "danger";
  button.textContent = "Delete";
  const who = document.createElement("span");
  who.className = "visually-hidden";
  who.textContent = ` ${person.name}`;
  button.append(who);
  button.addEventListener("click", () => removePerson(person));
  entry.append(label, count, button);
  return entry;
}

async function refreshPeople() {
  const status = $("people-status");
  const list = $("people-list");
  let response;
  try {
    response = await apiFetch("/v1/people", { headers: { Accept: "application/json" } });
  } catch {
    setStatus(status, UNREACHABLE, "error");
    return;
  }
  if (response.status === 404) {
    list.replaceChildren();
    setStatus(status, "Enrollment is not available on this server.", "warning");
    return;
  }
  if (!response.ok) {
    setStatus(status, `Could not load the people list (HTTP ${response.status}).`, "error");
    return;
  }
  const { people } = await response.json();
  list.replaceChildren(...people.map(personEntry));
  setStatus(status, peopleSummary(people));
}

function peopleSummary(people) {
  const fromFile = people.filter((person) => person.read_only).length;
  const enrolled = people.length - fromFile;
  const file = `${plural(fromFile, "person", "people")} from the gallery file (read-only)`;
  if (enrolled && fromFile) return `${plural(enrolled, "person", "people")} enrolled, ${file}.`;
  if (enrolled) return `${plural(enrolled, "person", "people")} enrolled.`;
  if (fromFile) return `${file}; nobody enrolled here yet.`;
  return "Nobody is enrolled yet.";
}

async function removePerson(person) {
  if (!window.confirm(`Delete ${person.name} and their ${plural(person.photos, "photo")}?`)) return;
  const status = $("people-status");
  let response;
  try {
    response = await apiFetch(personUrl(person.name), { method: "DELETE" });
  } catch {
    setStatus(status, UNREACHABLE, "error");
    return;
  }
  if (!response.ok && response.status !== 404) {
    setStatus(status, `Could not delete ${person.name} (HTTP ${response.status}).`, "error");
    return;
  }
  await refreshPeople();
  setStatus(status, `Deleted ${person.name}. ${status.textContent}`, "success");
  // The button that had focus is gone: keep keyboard users in the list rather than at the top of the page.
  $("people-title").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  setUpKey();
  setUpRecognize();
  setUpCompare();
  $("enroll-form").addEventListener("submit", enroll);
  refreshPeople();
});
