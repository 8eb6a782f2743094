/* Modelport dashboard enhancements. Plain ES2020, no build step; htmx (vendored) does the polling.
 *
 * - [data-copy="#sel"] buttons copy an element's value/text to the clipboard.
 * - form[data-confirm] asks before submitting.
 * - #upload-form checks its fields, posts to the versions API with an upload progress bar, then
 *   loads the live status fragment (which polls itself through htmx until ready/failed).
 * - form.js-set-default PATCHes the model's default version through the API.
 * - #try-form runs a prediction through the API with the session and shows output and charge.
 * All API calls use the session cookie and send the CSRF token (X-CSRFToken).
 */
(function () {
  "use strict";

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function problemText(body, status) {
    if (body && typeof body === "object" && (body.detail || body.title)) return body.detail || body.title;
    return "The request failed (HTTP " + status + ").";
  }

  // Credits as every page shows them (billing/display.py): "50,000.000000".
  function creditsText(micro) {
    const sign = micro < 0 ? "-" : "";
    const abs = Math.abs(micro);
    const whole = Math.floor(abs / 1000000);
    const frac = String(abs % 1000000).padStart(6, "0");
    return sign + whole.toLocaleString("en-US") + "." + frac;
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch (_) {
      return null;
    }
  }

  // ---- field errors, shared by the forms --------------------------------------------------------
  function errorSlot(form, name) {
    return form.querySelector('[data-error-for="' + CSS.escape(name) + '"]');
  }

  function showError(form, name, message) {
    const slot = errorSlot(form, name) || errorSlot(form, "__all__");
    if (!slot) return;
    slot.textContent = message;
    slot.hidden = false;
    const field = slot.closest(".field");
    if (field) {
      field.classList.add("has-error");
      const input = field.querySelector("input, textarea, select");
      if (input) {
        input.setAttribute("aria-invalid", "true");
        if (slot.id) input.setAttribute("aria-describedby", slot.id);
      }
    }
  }

  function clearErrors(form) {
    form.querySelectorAll("[data-error-for]").forEach(function (slot) {
      slot.textContent = "";
      slot.hidden = true;
    });
    form.querySelectorAll(".has-error").forEach(function (el) { el.classList.remove("has-error"); });
    form.querySelectorAll("[aria-invalid]").forEach(function (el) { el.removeAttribute("aria-invalid"); });
  }

  function focusFirstError(form) {
    const slot = Array.from(form.querySelectorAll("[data-error-for]")).find(function (s) { return !s.hidden; });
    const field = slot && slot.closest(".field");
    const input = field && field.querySelector("input, textarea, select");
    if (input) input.focus();
  }

  // ---- copy buttons and confirmations ---------------------------------------------------------------
  document.addEventListener("click", async function (event) {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    const source = document.querySelector(button.dataset.copy);
    if (!source) return;
    const text = source.matches("input, textarea") ? source.value : source.textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      // No async clipboard (insecure context): select the text so Ctrl+C works.
      if (source.select) source.select();
      button.textContent = "Press Ctrl+C";
      return;
    }
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(function () { button.textContent = label; }, 1500);
  });

  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  // ---- upload wizard ----------------------------------------------------------------------------------
  const ARTIFACT_TYPES = {
    onnx: [".onnx"],
    torchscript: [".pt", ".pth", ".ts", ".zip", ".torchscript"],
    state_dict: [".safetensors", ".pt", ".pth"],
  };
  const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

  function hasSuffix(name, suffixes) {
    const lower = name.toLowerCase();
    return suffixes.some(function (s) { return lower.endsWith(s); });
  }

  function parseJson(text) {
    try {
      return { value: JSON.parse(text) };
    } catch (err) {
      return { error: "not valid JSON: " + err.message };
    }
  }

  function checkInputs(value, dtypes) {
    if (!Array.isArray(value) || value.length === 0 || value.length > 64) {
      return "must be a JSON array of 1 to 64 tensors";
    }
    const seen = new Set();
    for (let i = 0; i < value.length; i++) {
      const spec = value[i];
      const where = "inputs[" + i + "]";
      if (spec === null || typeof spec !== "object" || Array.isArray(spec)) return where + " must be an object";
      if (typeof spec.name !== "string" || !spec.name || seen.has(spec.name)) {
        return where + ".name must be a unique, non-empty string";
      }
      seen.add(spec.name);
      if (!dtypes.includes(spec.dtype)) return where + ".dtype must be one of " + dtypes.join(", ");
      if (!Array.isArray(spec.shape) || spec.shape.length > 8 ||
          !spec.shape.every(function (d) { return d === null || (Number.isInteger(d) && d >= 1); })) {
        return where + ".shape must be a list of positive integers or null (a dynamic axis)";
      }
    }
    return null;
  }

  function initUpload(form) {
    const maxBytes = Number(form.dataset.maxBytes);
    const dtypes = form.dataset.dtypes.split(" ");
    const progress = document.getElementById("upload-progress-box");
    const bar = progress.querySelector("progress");
    const barText = progress.querySelector(".progress-text");
    const submit = form.querySelector('button[type="submit"]');
    const statusBox = document.getElementById("upload-status");
    const statusCard = document.getElementById("upload-status-card");
    const another = form.querySelector(".upload-another");
    let busy = false;  // an upload is running or has succeeded: a second submit would be a second version

    function format() {
      const checked = form.querySelector('input[name="format"]:checked');
      return checked ? checked.value : "";
    }

    function applyFormat() {
      const fmt = format();
      form.querySelectorAll("[data-formats]").forEach(function (el) {
        el.hidden = !el.dataset.formats.split(" ").includes(fmt);
      });
      const types = ARTIFACT_TYPES[fmt];
      if (types) form.elements.artifact.setAttribute("accept", types.join(","));
      form.elements.source.setAttribute("accept", ".py");
    }

    function validate() {
      const fmt = format();
      const errors = {};
      const artifact = form.elements.artifact.files[0];
      const source = form.elements.source.files[0];
      if (!ARTIFACT_TYPES[fmt]) errors.format = "Choose a format.";
      if (!artifact) {
        errors.artifact = "Choose the model file.";
      } else if (ARTIFACT_TYPES[fmt] && !hasSuffix(artifact.name, ARTIFACT_TYPES[fmt])) {
        errors.artifact = "A " + fmt + " upload must be a " + ARTIFACT_TYPES[fmt].join(", ") + " file, not " +
          JSON.stringify(artifact.name) + ".";
      } else if (artifact.size === 0) {
        errors.artifact = "The file is empty.";
      }
      const total = (artifact ? artifact.size : 0) + (source && fmt === "state_dict" ? source.size : 0);
      if (!errors.artifact && total > maxBytes) {
        errors.artifact = "The upload is " + (total / 1048576).toFixed(1) + " MB; the limit is " +
          Math.floor(maxBytes / 1048576) + " MB.";
      }
      if (fmt === "state_dict") {
        if (!source) errors.source = "A state_dict needs the Python source that defines the module.";
        else if (!hasSuffix(source.name, [".py"])) errors.source = "The source must be a .py file.";
        const entry = form.elements.entrypoint.value.trim();
        if (!entry) errors.entrypoint = "Name the nn.Module class or factory function in the source.";
        else if (!IDENTIFIER.test(entry)) errors.entrypoint = "Must be a Python identifier.";
        const kwargs = form.elements.init_kwargs.value.trim();
        if (kwargs) {
          const parsed = parseJson(kwargs);
          if (parsed.error) errors.init_kwargs = "init_kwargs is " + parsed.error;
          else if (parsed.value === null || typeof parsed.value !== "object" || Array.isArray(parsed.value)) {
            errors.init_kwargs = "init_kwargs must be a JSON object.";
          }
        }
      }
      const inputs = form.elements.inputs.value.trim();
      if (inputs) {
        const parsed = parseJson(inputs);
        const problem = parsed.error || checkInputs(parsed.value, dtypes);
        if (problem) errors.inputs = "Inputs: " + problem + ".";
      } else if (fmt === "state_dict" || fmt === "torchscript") {
        errors.inputs = "A " + fmt + " upload needs its inputs (name, dtype, shape).";
      }
      const outputs = form.elements.outputs.value.trim();
      if (outputs) {
        const parsed = parseJson(outputs);
        if (parsed.error) errors.outputs = "Outputs: " + parsed.error + ".";
        else if (!Array.isArray(parsed.value) || !parsed.value.every(function (o) { return typeof o === "string" && o; })) {
          errors.outputs = "Outputs must be a JSON array of names.";
        }
      }
      return errors;
    }

    function formData() {
      const fmt = format();
      const data = new FormData();
      data.append("format", fmt);
      data.append("artifact", form.elements.artifact.files[0]);
      if (fmt === "state_dict") {
        data.append("source", form.elements.source.files[0]);
        data.append("entrypoint", form.elements.entrypoint.value.trim());
        if (form.elements.init_kwargs.value.trim()) data.append("init_kwargs", form.elements.init_kwargs.value.trim());
      }
      ["inputs", "outputs"].forEach(function (name) {
        const value = form.elements[name].value.trim();
        if (value) data.append(name, value);
      });
      return data;
    }

    function setProgress(fraction) {
      const pct = Math.round(fraction * 100);
      bar.value = pct;
      barText.textContent = pct + "%";
    }

    function followStatus(number) {
      const url = form.dataset.statusUrl.replace("__N__", String(number));
      htmx.ajax("GET", url, { target: statusBox, swap: "innerHTML" });
    }

    form.addEventListener("change", function (event) {
      if (event.target.name === "format") applyFormat();
    });
    applyFormat();

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (busy) return;
      clearErrors(form);
      const errors = validate();
      const names = Object.keys(errors);
      if (names.length) {
        names.forEach(function (name) { showError(form, name, errors[name]); });
        focusFirstError(form);
        return;
      }
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.dataset.api);
      xhr.setRequestHeader("X-CSRFToken", csrfToken());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) setProgress(e.loaded / e.total);
      });
      xhr.addEventListener("load", function () {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (_) { body = null; }
        if (xhr.status === 202 && body) {
          // Done: the button stays disabled (a second click would upload a second version).
          setProgress(1);
          progress.querySelector("label").textContent = "Uploaded";
          submit.textContent = "Uploaded";
          another.hidden = false;
          followStatus(body.version);
          return;
        }
        busy = false;
        submit.disabled = false;
        progress.hidden = true;
        const fields = Object.keys((body && body.errors) || {}).filter(function (f) { return errorSlot(form, f); });
        showError(form, fields[0] || "__all__", problemText(body, xhr.status));
        focusFirstError(form);
      });
      xhr.addEventListener("error", function () {
        busy = false;
        submit.disabled = false;
        progress.hidden = true;
        showError(form, "__all__", "The upload did not reach the server (network error). Try again.");
      });
      busy = true;
      submit.disabled = true;
      progress.hidden = false;
      progress.querySelector("label").textContent = "Uploading";
      setProgress(0);
      // The status panel is beside the form on a wide screen and below it on a phone: bring it into view.
      statusCard.scrollIntoView({ block: "nearest" });
      xhr.send(formData());
    });
  }

  // ---- default version -----------------------------------------------------------------------------
  document.addEventListener("submit", async function (event) {
    const form = event.target;
    if (!form.classList.contains("js-set-default") || event.defaultPrevented) return;
    event.preventDefault();
    const number = Number(form.elements.default_version.value);
    const response = await fetch(form.dataset.api, {
      method: "PATCH",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify({ default_version: number }),
      credentials: "same-origin",
    });
    const body = await readJson(response);  // read it whole: a reload mid-body aborts the request
    if (response.ok) {
      window.location.reload();
      return;
    }
    const slot = document.querySelector('[data-error-for="default_version"]');
    slot.textContent = problemText(body, response.status);
    slot.hidden = false;
  });

  // ---- try it -------------------------------------------------------------------------------------
  function initTryIt(form) {
    const result = document.getElementById("try-result");
    const submit = form.querySelector('button[type="submit"]');

    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      clearErrors(form);
      const input = {};
      let bad = false;
      form.querySelectorAll("[data-input-name]").forEach(function (area) {
        const parsed = parseJson(area.value.trim());
        if (parsed.error) {
          showError(form, area.dataset.inputName, "Input " + area.dataset.inputName + " is " + parsed.error);
          bad = true;
        } else if (!Array.isArray(parsed.value)) {
          showError(form, area.dataset.inputName, "Input " + area.dataset.inputName + " must be a nested list.");
          bad = true;
        } else {
          input[area.dataset.inputName] = parsed.value;
        }
      });
      if (bad) {
        focusFirstError(form);
        return;
      }
      submit.disabled = true;
      submit.textContent = "Running…";
      try {
        const response = await fetch(form.dataset.api, {
          method: "POST",
          headers: { "Content-Type": "application/json", "Accept": "application/json", "Prefer": "wait",
                     "X-CSRFToken": csrfToken() },
          body: JSON.stringify({ input: input }),
          credentials: "same-origin",
        });
        const body = await readJson(response);
        if (!response.ok || !body || !body.status) {
          result.hidden = true;
          const names = Object.keys((body && body.errors) || {});
          showError(form, names.find(function (n) { return errorSlot(form, n); }) || "__all__",
            problemText(body, response.status));
          return;
        }
        result.hidden = false;
        result.dataset.predictionId = body.id;
        result.querySelector(".r-status").textContent = body.status;
        result.querySelector(".r-charged").textContent = creditsText(body.credits.charged_micro);
        result.querySelector(".r-charged").dataset.micro = String(body.credits.charged_micro);
        const ms = body.metrics && body.metrics.total_ms;
        result.querySelector(".r-time").textContent = ms == null ? "—" : ms.toFixed(1) + " ms";
        const out = body.output ? JSON.stringify(body.output) : JSON.stringify(body.error);
        result.querySelector(".r-output").textContent = out.length > 20000 ? out.slice(0, 20000) + " …" : out;
      } catch (err) {
        showError(form, "__all__", "The request did not reach the server: " + err.message);
      } finally {
        submit.disabled = false;
        submit.textContent = "Run prediction";
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const upload = document.getElementById("upload-form");
    if (upload) initUpload(upload);
    const tryForm = document.getElementById("try-form");
    if (tryForm) initTryIt(tryForm);
  });
})();
