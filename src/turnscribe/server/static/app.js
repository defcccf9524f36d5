// The web page is a client of the server's own API: it creates a durable job, follows its progress, shows the
// transcript and downloads it in any format. The job id lives in the URL (#job=...), so a reload resumes.
"use strict";

const $ = (id) => document.getElementById(id);
const EXTENSIONS = { srt: "srt", vtt: "vtt", text: "txt", diarized_json: "json", rttm: "rttm" };
let currentJob = null;
let recordingName = "transcript";
// Answers of a server that is restarting (its jobs survive that) or loading its model, or of a proxy in front of it.
const UNAVAILABLE = new Set([502, 503, 504]);

function headers() {
  const key = $("key").value.trim();
  localStorage.setItem("turnscribe-key", key);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error.message;
    } catch (_) {
      // not an OpenAI error object: keep the status line
    }
    throw Object.assign(new Error(message), { status: response.status });
  }
  return response;
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The job, or null while the server cannot answer (fetch itself fails with a TypeError when nothing answers).
async function jobStatus(jobId) {
  try {
    return await (await api(`v1/audio/jobs/${jobId}`)).json();
  } catch (error) {
    if (error instanceof TypeError || UNAVAILABLE.has(error.status)) return null;
    throw error;
  }
}

function show(message, { error = false, progress = null } = {}) {
  $("status").hidden = false;
  $("message").textContent = message;
  $("message").classList.toggle("error", error);
  $("progress").hidden = progress === null;
  if (progress !== null) $("progress").value = progress;
}

function clock(seconds) {
  const tenths = Math.round(seconds * 10); // rounded before splitting: 59.96 s is 1:00.0, not 0:60.0
  const m = Math.floor(tenths / 600);
  return `${m}:${((tenths - m * 600) / 10).toFixed(1).padStart(4, "0")}`;
}

function colour(speaker) {
  let hash = 0;
  for (const c of speaker) hash = (hash * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${hash}, 60%, 35%)`;
}

function render(transcript) {
  const body = $("transcript").querySelector("tbody");
  body.replaceChildren();
  for (const segment of transcript.segments) {
    const row = body.insertRow();
    row.insertCell().textContent = clock(segment.start);
    row.insertCell().textContent = clock(segment.end);
    const speaker = row.insertCell();
    speaker.textContent = segment.speaker;
    speaker.style.color = colour(segment.speaker);
    row.insertCell().textContent = segment.text;
    row.cells[0].className = row.cells[1].className = "time";
    speaker.className = "speaker";
  }
  $("result").hidden = false;
}

async function follow(jobId) {
  currentJob = jobId;
  location.hash = `job=${jobId}`;
  $("cancel").hidden = false;
  // A job started later takes the page over: this loop then stops without touching it.
  const current = () => currentJob === jobId;
  while (current()) {
    const job = await jobStatus(jobId);
    if (!current()) return;
    if (job === null) {
      show("The server is not answering; trying again…", { error: true });
      await pause(2000);
      continue;
    }
    recordingName = job.filename.replace(/\.[^.]*$/, "") || "transcript";
    const { windows_done: done, windows_total: total } = job.progress;
    if (job.status === "succeeded") {
      const transcript = await (await api(`v1/audio/jobs/${jobId}/result?response_format=diarized_json`)).json();
      if (!current()) return;
      render(transcript);
      show(`Done: ${job.filename}, ${Math.round(job.duration || 0)} s.`);
      break;
    }
    if (job.status === "failed" || job.status === "cancelled") {
      show(job.error ? job.error.message : `The job was ${job.status}.`, { error: true });
      break;
    }
    const label = total ? `${done} of ${total} windows` : "waiting for a worker";
    show(`${job.status === "queued" ? "Queued" : "Transcribing"} ${job.filename}: ${label}`, {
      progress: total ? done / total : 0,
    });
    await pause(400);
  }
  if (current()) $("cancel").hidden = true;
}

async function start(event) {
  event.preventDefault();
  $("result").hidden = true;
  try {
    const models = await (await api("v1/models")).json();
    const form = new FormData();
    form.append("file", $("file").files[0]);
    form.append("model", models.data[0].id);
    form.append("language", $("language").value);
    if ($("speakers").value) form.append("num_speakers", $("speakers").value);
    form.append("response_format", "diarized_json");
    show("Uploading…", { progress: 0 });
    const job = await (await api("v1/audio/jobs", { method: "POST", body: form })).json();
    await follow(job.id);
  } catch (error) {
    show(error.message, { error: true });
  }
}

async function download(format) {
  try {
    const response = await api(`v1/audio/jobs/${currentJob}/result?response_format=${format}`);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = `${recordingName}.${EXTENSIONS[format]}`;
    link.click();
    URL.revokeObjectURL(link.href);
  } catch (error) {
    show(error.message, { error: true });
  }
}

function setUp() {
  const languages = JSON.parse($("languages").textContent);
  const preferred = $("language").dataset.default;
  for (const [code, name] of Object.entries(languages)) {
    $("language").add(new Option(name, code, code === preferred, code === preferred));
  }
  $("key").value = localStorage.getItem("turnscribe-key") || "";
  $("upload").addEventListener("submit", start);
  $("cancel").addEventListener("click", () => api(`v1/audio/jobs/${currentJob}/cancel`, { method: "POST" }));
  for (const button of document.querySelectorAll("#downloads button")) {
    button.addEventListener("click", () => download(button.dataset.format));
  }
  const resumed = location.hash.match(/^#job=(job_[0-9a-f]+)$/);
  if (resumed) follow(resumed[1]).catch((error) => show(error.message, { error: true }));
}

setUp();
