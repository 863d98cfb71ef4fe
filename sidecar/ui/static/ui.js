// Progressive enhancements of Gatehouse's server-rendered pages; every page works without them.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Ask before destructive actions.
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });

  // Copy buttons: the text of the element a button names.
  document.querySelectorAll("button[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const text = document.querySelector(button.dataset.copy).textContent;
      try {
        await navigator.clipboard.writeText(text);
      } catch (_) {  // no clipboard API outside secure contexts: select the text instead
        const range = document.createRange();
        range.selectNodeContents(document.querySelector(button.dataset.copy));
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
        document.execCommand("copy");
      }
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
  });

  // Show only the fields of the chosen strategy or credentials type.
  document.querySelectorAll("[data-show-for]").forEach((block) => {
    const form = block.closest("form");
    const inputs = form.querySelectorAll(`[name="${block.dataset.showFor}"]`);
    const values = block.dataset.values.split(" ");
    const update = () => {
      const chosen = Array.from(inputs).find((input) => input.type !== "radio" || input.checked);
      block.hidden = !chosen || !values.includes(chosen.value);
    };
    inputs.forEach((input) => input.addEventListener("change", update));
    update();
  });

  // The device name a sample certificate CN yields, asked of the server's own rule.
  const sample = document.querySelector("[data-cn-preview]");
  if (sample) {
    const regex = document.getElementById("cn_regex");
    const result = document.getElementById("cn-preview-result");
    let asked = 0;
    const preview = async () => {
      const mine = ++asked;
      const query = new URLSearchParams({cn: sample.value, regex: regex.value});
      const response = await fetch(`${sample.dataset.cnPreview}?${query}`, {credentials: "same-origin"});
      if (mine !== asked || !response.ok) return;
      const {name} = await response.json();
      result.textContent = name === null ? "— (no match: provisioning would fail)" : name;
    };
    sample.addEventListener("input", preview);
    regex.addEventListener("input", preview);
  }

  // A running import: poll its status, then show the result page.
  const job = document.querySelector("[data-import-status]");
  if (job && job.dataset.finished !== "true") {
    const bar = document.getElementById("import-progress");
    const counts = document.getElementById("import-counts");
    const poll = async () => {
      const response = await fetch(job.dataset.importStatus, {credentials: "same-origin"});
      if (!response.ok) return;
      const status = await response.json();
      bar.max = status.total || 1;
      bar.value = status.done;
      counts.textContent = `${status.done} of ${status.total} lines processed`;
      if (status.finished) window.location.reload();
      else setTimeout(poll, 300);
    };
    setTimeout(poll, 300);
  }
});
