// Drake dashboard: the upload page. Sends a test file to the coordinator's
// resumable upload endpoint (tus) with tus-js-client (embedded), as the signed-in
// session: its CSRF token goes in a header, since a cookie alone may not upload.
// An upload cut off (a closed tab, a dropped network) continues from the
// coordinator's offset when the same file is chosen again in this browser.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form || typeof tus === "undefined") return;
  const progress = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  const button = form.querySelector("button");

  function say(text) {
    status.textContent = text;
  }

  // The job page's link, once the coordinator names the job.
  function linkJob(job) {
    const a = document.createElement("a");
    a.href = "/jobs/" + encodeURIComponent(job);
    a.id = "upload-job";
    a.textContent = "job " + job;
    status.replaceChildren(document.createTextNode("Uploaded: "), a);
  }

  // A completion the coordinator is still joining names its job a little later.
  function askForJob(url, csrf, attempt) {
    fetch(url, { headers: { "X-Drake-CSRF": csrf } })
      .then(function (r) { return r.json(); })
      .then(function (u) {
        if (u.job_id) return linkJob(u.job_id);
        if (attempt < 30) setTimeout(function () { askForJob(url, csrf, attempt + 1); }, 1000);
        else say("Uploaded; the coordinator has not named the job yet. Look in Jobs.");
      })
      .catch(function (e) { say("Uploaded, but asking for its job failed: " + e.message); });
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    const file = form.elements.file.files[0];
    if (!file) return;
    const csrf = form.elements.csrf.value;
    let job = null;
    button.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    say("Uploading " + file.name + "…");
    const upload = new tus.Upload(file, {
      endpoint: "/api/v1/uploads/",
      headers: { "X-Drake-CSRF": csrf },
      chunkSize: 8 * 1024 * 1024,
      retryDelays: [0, 1000, 3000, 5000, 10000],
      metadata: { filename: file.name, profile: form.elements.profile.value },
      removeFingerprintOnSuccess: true,
      onAfterResponse: function (req, res) {
        const named = res.getHeader("Drake-Job");
        if (named) job = named;
      },
      onProgress: function (sent, total) {
        progress.value = total ? Math.floor((sent / total) * 100) : 0;
        say("Uploading " + file.name + ": " + Math.floor(sent / 1048576) + " of " + Math.ceil(total / 1048576) + " MiB");
      },
      onError: function (e) {
        button.disabled = false;
        const res = e.originalResponse;
        let why = e.message;
        if (res) {
          try { why = JSON.parse(res.getBody()).message || why; } catch (_) { why = res.getBody() || why; }
        }
        say("The upload stopped: " + why + ". Choose the same file again to continue.");
      },
      onSuccess: function () {
        button.disabled = false;
        progress.value = 100;
        if (job) linkJob(job);
        else askForJob(upload.url, csrf, 0);
      },
    });
    upload.findPreviousUploads().then(function (previous) {
      if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
      upload.start();
    });
  });
})();
