// loraplug studio: the pages' behaviour, in plain JavaScript (no build step, nothing fetched from a CDN).
// Forms are built from /api/schema (the installed plugins' option models); every check is the server's
// `recipe check`; live runs come from /api/run/events (server-sent events over the run directory).
"use strict";

const CSRF = document.querySelector('meta[name="csrf"]').content;

async function api(method, url, body) {
  let response;
  try {
    response = await fetch(url, {
      method,
      headers: { "Content-Type": "application/json", "X-Studio-CSRF": CSRF },
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch (e) { // the studio stopped or restarted: say so, the run itself goes on
    return { ok: false, status: 0, data: { error: "the studio cannot be reached", fix: "start `loraplug studio` again and reload" } };
  }
  let data = {};
  try { data = await response.json(); } catch (e) { data = { error: await response.text() }; }
  return { ok: response.ok, status: response.status, data };
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

function errorText(data) {
  return [data.error, data.fix].filter(Boolean).join(" — ") || "failed";
}

// ---------------------------------------------------------------------------------------------- charts

const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];

// lines: [{label, points: [[step, value], ...]}]; draws one SVG chart with its axes' ranges.
function lineChart(title, lines) {
  const W = 520, H = 220, L = 52, R = 10, T = 22, B = 26;
  const all = lines.flatMap((l) => l.points);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "line-chart");
  svg.dataset.points = String(all.length);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  add("text", { x: L, y: 14, class: "chart-title" }, title);
  if (!all.length) { add("text", { x: L, y: H / 2 }, "no points yet"); return svg; }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y0 === y1) { y0 -= 1; y1 += 1; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" });
  add("text", { x: 2, y: T + 8, class: "tick" }, y1.toPrecision(3));
  add("text", { x: 2, y: H - B, class: "tick" }, y0.toPrecision(3));
  add("text", { x: L, y: H - 8, class: "tick" }, `step ${x0}`);
  add("text", { x: W - R - 60, y: H - 8, class: "tick" }, `step ${x1}`);
  lines.forEach((line, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const d = line.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    add("polyline", { points: d, fill: "none", stroke: colour, "stroke-width": 2 });
    if (line.points.length === 1) add("circle", { cx: sx(line.points[0][0]), cy: sy(line.points[0][1]), r: 3, fill: colour });
    add("text", { x: W - R - 150, y: T + 12 + 14 * i, fill: colour, class: "legend" }, line.label);
  });
  return svg;
}

// runs: [{name, series: {"train/loss": [[step, v]...], ...}}] → one chart per metric, runs overlaid.
function drawCharts(container, runs) {
  const metrics = [];
  for (const run of runs) for (const key of Object.keys(run.series || {})) if (!metrics.includes(key)) metrics.push(key);
  metrics.sort((a, b) => (a === "train/loss" ? -1 : b === "train/loss" ? 1 : a.localeCompare(b)));
  container.replaceChildren(...metrics.filter((m) => !m.endsWith("/lr") || metrics.length < 4).map((metric) =>
    el("div", { class: "chart-box", "data-metric": metric },
      lineChart(metric, runs.filter((r) => r.series[metric]).map((r) => ({ label: r.name, points: r.series[metric] }))))));
  if (!metrics.length) container.replaceChildren(el("p", { text: "No metrics logged yet." }));
}

// ------------------------------------------------------------------------------------------- new run

const NewRun = {
  schema: { chosen_in_train: [], core: {}, kinds: [] },
  checkSoon: () => {},
  base: "recipes",
  name: "",
  present: new Set(), // "section.key" of keys the opened recipe sets: kept even when equal to the default

  async init() {
    this.schema = (await api("GET", "/api/schema")).data;
    const pick = document.getElementById("recipe-pick");
    for (const path of (await api("GET", "/api/recipes")).data.recipes) pick.append(el("option", { value: path, text: path }));
    pick.addEventListener("change", () => (pick.value ? this.open(pick.value) : this.load({ base: "", name: "", form: {} })));
    document.getElementById("open-btn").addEventListener("click", () => this.open(document.getElementById("open-path").value));
    document.getElementById("save-btn").addEventListener("click", () => this.save());
    document.getElementById("launch-btn").addEventListener("click", () => this.launch());
    document.getElementById("filter").addEventListener("input", (e) => this.filter(e.target.value));
    for (const id of ["overrides", "smoke"]) document.getElementById(id).addEventListener("input", () => this.checkSoon());
    this.checkSoon = debounce(() => this.check(), 350);
    const initial = pick.dataset.initial || new URLSearchParams(location.search).get("recipe");
    if (initial) { pick.value = initial; await this.open(initial); } else this.load({ base: "", name: "", form: {} });
  },

  async open(path) {
    const { ok, data } = await api("GET", `/api/recipe?path=${encodeURIComponent(path)}`);
    if (!ok) { this.showProblems([errorText(data)]); return; }
    document.getElementById("save-path").value = data.path;
    this.load(data);
  },

  load(data) {
    this.base = data.base; this.name = data.name;
    this.present = new Set();
    for (const [section, table] of Object.entries(data.form)) {
      const tables = Array.isArray(table) ? table : [table];
      tables.forEach((t, i) => Object.keys(t).forEach((k) => this.present.add(Array.isArray(table) ? `${section}[${i}].${k}` : `${section}.${k}`)));
    }
    this.render(data.form);
    this.check();
  },

  kindsFor(stage, modelKind) {
    return this.schema.kinds.filter((k) => k.stage === stage && (!k.models.length || !modelKind || k.models.includes(modelKind)));
  },

  fieldsOf(section, kind) {
    const core = this.schema.core[section] || [];
    const spec = this.schema.kinds.find((k) => k.stage === section && k.name === kind && (section !== "adapter" && section !== "export" || !k.models.length || k.models.includes(this.modelKind())));
    return { core, own: spec ? spec.fields : [], spec };
  },

  chosenInTrain(stage) {
    const select = document.querySelector(`[name="train.${stage}"]`);
    const spec = (this.schema.core.train || []).find((f) => f.name === stage);
    return (select && select.value) || (spec && spec.default) || "";
  },

  modelKind() {
    const select = document.querySelector('[name="model.kind"]');
    return select ? select.value : "";
  },

  render(form) {
    const root = document.getElementById("recipe-form");
    root.replaceChildren();
    for (const section of this.schema.sections) {
      if (section === "export") {
        const box = el("div", { id: "exports" });
        (form.export || []).forEach((t, i) => box.append(this.fieldset("export", t, i)));
        root.append(el("h3", { text: "[[export]]" }), box,
          el("button", { type: "button", class: "small", text: "+ export", onclick: () => { box.append(this.fieldset("export", {}, box.children.length)); this.checkSoon(); } }));
      } else root.append(this.fieldset(section, form[section] || {}, null));
    }
    if (this.schema.broken.length) root.append(el("p", { class: "error", text: "Not shown: " + this.schema.broken.join("; ") }));
  },

  fieldset(section, values, index) {
    const prefix = index === null ? section : `${section}[${index}]`;
    const box = el("fieldset", { "data-section": section, "data-index": index === null ? "" : String(index), id: `section-${prefix}` });
    const legend = el("legend", { text: index === null ? `[${section}]` : `[[export]] #${index + 1}` });
    box.append(legend);
    let kind = values.kind;
    if (["data", "model", "adapter", "export"].includes(section)) {
      const kinds = section === "data" || section === "model" ? this.kindsFor(section, "") : this.kindsFor(section, this.modelKind());
      const names = [...new Set(kinds.map((k) => k.name))];
      if (!kind && names.length) kind = names[0];
      const select = el("select", { name: `${prefix}.kind`, id: `f-${prefix}-kind`.replace(/[[\]]/g, "-"), "data-key": "kind" });
      for (const k of kinds.filter((k, i) => names.indexOf(k.name) === i)) select.append(el("option", { value: k.name, text: `${k.name} — ${k.distribution}: ${k.summary}`.slice(0, 110) }));
      if (kind && !names.includes(kind)) select.append(el("option", { value: kind, text: `${kind} (not installed)` }));
      select.value = kind || "";
      select.addEventListener("change", () => {
        const kept = this.collectSection(box);
        kept.kind = select.value;
        box.replaceWith(this.fieldset(section, kept, index));
        if (section === "model") for (const s of ["adapter", ...this.schema.chosen_in_train]) this.rerender(s);
        this.checkSoon();
      });
      box.append(el("label", { class: "field kind", "data-name": `${prefix}.kind` }, el("span", { class: "key", text: "kind" }), select, el("span", { class: "field-error" })));
      if (section === "export") box.append(el("button", { type: "button", class: "small remove", text: "remove", onclick: () => { box.remove(); this.renumberExports(); this.checkSoon(); } }));
    }
    // [optimizer], [objective]: the options of the kind train.optimizer / train.objective names.
    const chosen = this.schema.chosen_in_train.includes(section) ? this.chosenInTrain(section) : null;
    const { core, own } = this.fieldsOf(section, chosen || kind);
    if (chosen) legend.textContent = `[${section}] — options of train.${section} = "${chosen}"`;
    for (const spec of [...core, ...own]) box.append(this.input(prefix, spec, values[spec.name]));
    const known = new Set([...core, ...own].map((f) => f.name).concat(["kind"]));
    for (const [key, value] of Object.entries(values)) {
      if (!known.has(key)) box.append(this.input(prefix, { name: key, widget: "toml", description: "not an option of this kind: `recipe check` says what it should be", default: null, choices: [], bounds: {} }, value));
    }
    return box;
  },

  rerender(section) {
    const box = document.querySelector(`fieldset[data-section="${section}"]`);
    if (box) box.replaceWith(this.fieldset(section, this.collectSection(box), null));
  },

  renumberExports() {
    [...document.querySelectorAll('#exports fieldset')].forEach((box, i) => box.replaceWith(this.fieldset("export", this.collectSection(box), i)));
  },

  input(prefix, spec, value) {
    const name = `${prefix}.${spec.name}`;
    const id = `f-${name}`.replace(/[.[\]]/g, "-");
    let input;
    if (spec.widget === "checkbox") {
      input = el("input", { type: "checkbox", id, name, "data-key": spec.name, "data-default": spec.default ? "1" : "0" });
      input.checked = value === undefined ? Boolean(spec.default) : Boolean(value);
    } else if (spec.widget === "select") {
      input = el("select", { id, name, "data-key": spec.name });
      input.append(el("option", { value: "", text: spec.default !== null ? `(default: ${spec.default})` : "(unset)" }));
      for (const c of spec.choices) input.append(el("option", { value: String(c), text: String(c) }));
      input.value = value === undefined ? "" : String(value);
      if (prefix === "train" && this.schema.chosen_in_train.includes(spec.name)) input.addEventListener("change", () => this.rerender(spec.name));
    } else {
      const multi = spec.widget === "toml" && typeof value === "string" && value.length > 60;
      input = el(multi ? "textarea" : "input", {
        id, name, "data-key": spec.name, type: multi ? undefined : spec.widget === "number" ? "text" : "text",
        inputmode: spec.widget === "number" ? "decimal" : undefined,
        placeholder: spec.default !== null && spec.default !== undefined ? String(spec.default) : spec.required ? "required" : "",
        class: spec.widget,
      });
      input.value = value === undefined ? "" : String(value);
    }
    input.addEventListener(input.tagName === "SELECT" || input.type === "checkbox" ? "change" : "input", () => this.checkSoon());
    const picker = spec.widget === "path" ? el("button", { type: "button", class: "small browse", text: "browse…", onclick: () => this.browse(label, input, this.base) }) : null;
    const bounds = Object.entries(spec.bounds || {}).map(([k, v]) => ({ ge: "≥", gt: ">", le: "≤", lt: "<" })[k] + v).join(" ");
    const label = el("label", { class: `field ${spec.widget}`, for: id, "data-name": name },
      el("span", { class: "key", text: spec.name + (spec.required ? " *" : "") }),
      input, picker,
      el("small", { class: "desc", text: [spec.description, bounds, spec.widget === "path" && prefix !== "run" ? "(relative to the recipe's folder)" : ""].filter(Boolean).join(" ") }),
      el("span", { class: "field-error" }));
    return label;
  },

  // A server-side file browser (confined to the studio's root): a file or folder becomes a path relative
  // to the recipe's folder, as recipes write them.
  async browse(label, input, folder) {
    const { ok, data } = await api("GET", `/api/browse?path=${encodeURIComponent(folder)}`);
    label.querySelector(".picker")?.remove();
    if (!ok) { label.append(el("div", { class: "picker error", text: errorText(data) })); return; }
    const choose = (path) => {
      const base = this.base ? this.base.split("/") : [];
      const parts = path.split("/");
      let same = 0;
      while (same < base.length && base[same] === parts[same]) same++;
      input.value = [...Array(base.length - same).fill(".."), ...parts.slice(same)].join("/") || ".";
      label.querySelector(".picker")?.remove();
      this.checkSoon();
    };
    const list = el("div", { class: "picker" },
      el("div", { class: "picker-head", text: `/${data.path}` },
        el("button", { type: "button", class: "small", text: "use this folder", onclick: () => choose(data.path) }),
        el("button", { type: "button", class: "small", text: "close", onclick: () => list.remove() })));
    if (data.parent !== null) list.append(el("a", { href: "#", text: "../", onclick: (e) => { e.preventDefault(); this.browse(label, input, data.parent); } }));
    for (const entry of data.entries) {
      list.append(el("a", { href: "#", class: entry.dir ? "dir" : "file", text: entry.name + (entry.dir ? "/" : ""),
        onclick: (e) => { e.preventDefault(); if (entry.dir) this.browse(label, input, entry.path); else choose(entry.path); } }));
    }
    label.append(list);
  },

  collectSection(box) {
    const values = {};
    const prefix = box.dataset.index === "" ? box.dataset.section : `${box.dataset.section}[${box.dataset.index}]`;
    for (const input of box.querySelectorAll("[data-key]")) {
      const key = input.dataset.key;
      if (input.type === "checkbox") {
        if (input.checked !== (input.dataset.default === "1") || this.present.has(`${prefix}.${key}`)) values[key] = input.checked;
      } else if (input.value.trim() !== "") values[key] = input.value;
    }
    return values;
  },

  collect() {
    const form = {};
    for (const box of document.querySelectorAll("#recipe-form fieldset")) {
      const values = this.collectSection(box);
      if (box.dataset.section === "export") (form.export = form.export || []).push(values);
      else if (Object.keys(values).length) form[box.dataset.section] = values;
    }
    return form;
  },

  body() {
    return {
      form: this.collect(), base: this.base, name: this.name,
      overrides: document.getElementById("overrides").value,
      smoke: document.getElementById("smoke").checked,
      overwrite: document.getElementById("overwrite").checked,
    };
  },

  async check() {
    const status = document.getElementById("check-status");
    status.textContent = "checking…";
    const { data } = await api("POST", "/api/check", this.body());
    document.getElementById("toml-preview").textContent = data.toml || "";
    this.showProblems(data.problems || [errorText(data)]);
    return data.ok;
  },

  showProblems(problems) {
    const status = document.getElementById("check-status");
    status.className = problems.length ? "status bad" : "status good";
    status.textContent = problems.length ? `${problems.length} problem${problems.length > 1 ? "s" : ""}` : "recipe check: OK";
    document.getElementById("problems").replaceChildren(...problems.map((p) => el("li", { text: p })));
    for (const label of document.querySelectorAll("label.field")) {
      const mine = problems.filter((p) => p.includes("`" + label.dataset.name + "`"));
      label.classList.toggle("invalid", mine.length > 0);
      const slot = label.querySelector(".field-error");
      if (slot) slot.textContent = mine.join(" ");
    }
  },

  async save() {
    const path = document.getElementById("save-path").value.trim();
    if (!path) { alert("Type where to save the recipe, e.g. recipes/my.toml"); return; }
    let response = await api("POST", "/api/save", { form: this.collect(), path });
    if (response.status === 409 && confirm(response.data.error)) response = await api("POST", "/api/save", { form: this.collect(), path, confirm: true });
    document.getElementById("launch-status").textContent = response.ok ? `saved ${response.data.saved}` : errorText(response.data);
  },

  async launch() {
    const out = document.getElementById("launch-status");
    out.textContent = "checking…";
    const { ok, data } = await api("POST", "/api/launch", this.body());
    if (!ok) { this.showProblems(data.problems || [errorText(data)]); out.textContent = "not launched"; return; }
    out.replaceChildren(el("a", { href: `/run?path=${encodeURIComponent(data.run)}`, text: `${data.state}: ${data.run}` }));
    location.href = `/run?path=${encodeURIComponent(data.run)}`;
  },

  filter(text) {
    const needle = text.toLowerCase();
    for (const label of document.querySelectorAll("label.field")) label.hidden = needle !== "" && !label.textContent.toLowerCase().includes(needle);
  },
};

// ---------------------------------------------------------------------------------------------- a run

const RunPage = {
  init() {
    const run = JSON.parse(document.getElementById("run-data").textContent);
    this.path = run.path;
    this.update(run);
    this.listen();
    document.getElementById("stop-btn").addEventListener("click", async () => {
      const { ok, data } = await api("POST", "/api/stop", { path: this.path });
      this.message(ok ? `sent Ctrl-C (SIGINT) to ${data.signalled}: the run saves a checkpoint and stops` : errorText(data));
    });
    document.getElementById("export-btn")?.addEventListener("click", async () => {
      const out = document.getElementById("export-status");
      const { ok, data } = await api("POST", "/api/export", { path: this.path, kind: document.getElementById("export-kind").value, overwrite: document.getElementById("export-overwrite").checked });
      if (!ok) { out.textContent = errorText(data); return; }
      out.textContent = `export ${data.state}…`;
      const poll = async () => {
        const job = ((await api("GET", "/api/jobs")).data.jobs || []).find((j) => j.id === data.job);
        if (job && job.state !== "ended") { out.textContent = `export ${job.state}…`; setTimeout(poll, 1000); return; }
        if (job && job.returncode !== 0) { out.textContent = `export failed: see ${job.log}`; return; }
        location.reload();
      };
      poll();
    });
    document.getElementById("resume-btn").addEventListener("click", async () => {
      const { ok, data } = await api("POST", "/api/resume", { path: this.path });
      this.message(ok ? `resume ${data.state} (job ${data.job})` : errorText(data));
      if (ok) this.listen();
    });
  },

  listen() {
    if (this.source) this.source.close();
    this.source = new EventSource(`/api/run/events?path=${encodeURIComponent(this.path)}`);
    this.source.onmessage = (event) => this.update(JSON.parse(event.data));
    this.source.addEventListener("queued", () => this.message("waiting in the queue (one training at a time)"));
  },

  message(text) { document.getElementById("run-message").textContent = text; },

  update(run) {
    const status = document.getElementById("run-status");
    status.textContent = run.status; status.className = `st st-${run.status}`;
    document.getElementById("run-step").textContent = run.step;
    const progress = document.getElementById("run-progress");
    if (run.total_steps) { progress.max = run.total_steps; document.getElementById("run-total").textContent = run.total_steps; }
    progress.value = run.step;
    document.getElementById("run-best").textContent = run.best ? `best ${run.best.metric} ${Number(run.best.value).toPrecision(4)} @${run.best.step}` : "";
    const running = run.status === "running" || run.status === "exporting";
    document.getElementById("stop-btn").disabled = !running;
    document.getElementById("resume-btn").disabled = running || run.status === "finished" || run.status === "waiting";
    const error = document.getElementById("run-error");
    error.hidden = !run.error; error.textContent = run.error || "";
    if (run.log_tail !== undefined) document.getElementById("log-tail").textContent = run.log_tail;
    drawCharts(document.getElementById("chart"), [{ name: run.name, series: run.series || {} }]);
    const samples = document.getElementById("samples");
    samples.replaceChildren(...(run.samples || []).slice().reverse().map((set) =>
      el("div", { class: "sample-set" }, el("h3", { text: `step ${set.step}` }),
        ...set.records.map((r) => el("div", { class: "sample" },
          el("div", { class: "prompt", text: r.prompt || "" }), ...sampleOutputs(run.path, r))))));
    if (!samples.children.length) samples.append(el("p", { text: "No samples yet." }));
  },
};

// A sample's outputs as the run wrote them (typed: text, image, audio, table; or an older image/text pair).
function sampleOutputs(runPath, record) {
  const outputs = Array.isArray(record.outputs) ? record.outputs
    : [...(record.image ? [{ type: "image", path: record.image }] : []), ...(record.text != null ? [{ type: "text", text: record.text }] : [])];
  const file = (path) => `/files?path=${encodeURIComponent(runPath + "/" + path)}`;
  return outputs.map((o) => {
    if (o.type === "image") return el("img", { src: file(o.path), alt: o.caption || record.prompt || "sample" });
    if (o.type === "audio") return el("audio", { controls: true, src: file(o.path) });
    if (o.type === "text") return el("pre", { text: o.text });
    if (o.type === "table") return el("pre", { text: (o.rows || []).map((row) => JSON.stringify(row)).join("\n") });
    return el("small", { text: `(a ${o.type} output the studio cannot show)` });
  });
}

// ------------------------------------------------------------------------------------------- runs list

function initRuns() {
  document.getElementById("compare-btn")?.addEventListener("click", () => {
    const picked = [...document.querySelectorAll(".pick:checked")].map((c) => `path=${encodeURIComponent(c.value)}`);
    if (picked.length) location.href = `/compare?${picked.join("&")}`;
  });
  for (const button of document.querySelectorAll("[data-cancel]")) {
    button.addEventListener("click", async () => { await api("POST", "/api/cancel", { job: button.dataset.cancel }); location.reload(); });
  }
}

function initCompare() {
  drawCharts(document.getElementById("compare-charts"), JSON.parse(document.getElementById("compare-data").textContent));
}

// --------------------------------------------------------------------------------------------- dataset

function initDataset() {
  for (const item of document.querySelectorAll("figure.item")) {
    item.querySelector(".save-caption").addEventListener("click", async () => {
      const text = item.querySelector(".caption").value;
      const body = { path: item.dataset.image, text };
      if (item.dataset.hadCaption === "yes") {
        if (!confirm(`Replace the caption of ${item.dataset.image}?`)) return;
        body.confirm = true;
      }
      let response = await api("POST", "/api/caption", body);
      if (response.status === 409 && confirm(response.data.error)) response = await api("POST", "/api/caption", { ...body, confirm: true });
      item.querySelector(".saved").textContent = response.ok ? (response.data.written ? "saved" : "unchanged") : errorText(response.data);
      if (response.ok) item.dataset.hadCaption = "yes";
    });
  }
  document.getElementById("undo-btn")?.addEventListener("click", async () => {
    const { ok, data } = await api("POST", "/api/undo", {});
    if (ok) location.reload(); else alert(errorText(data));
  });
  const folder = document.getElementById("captions")?.dataset.folder;
  document.getElementById("tag-apply")?.addEventListener("click", async () => {
    const body = { path: folder, op: document.getElementById("tag-op").value, tag: document.getElementById("tag-name").value, new: document.getElementById("tag-new").value };
    const first = await api("POST", "/api/tags", body);
    const out = document.getElementById("tag-result");
    if (!first.ok) { out.textContent = errorText(first.data); return; }
    if (!first.data.would_change) { out.textContent = "no caption would change"; return; }
    if (!confirm(`Change ${first.data.would_change} caption file(s)? (Undo puts them back)`)) return;
    const done = await api("POST", "/api/tags", { ...body, confirm: true });
    if (done.ok) location.reload(); else out.textContent = errorText(done.data);
  });
  initAutoCaption();
  const find = (tag) => {
    for (const item of document.querySelectorAll("figure.item")) {
      const tags = item.querySelector(".caption").value.split(",").map((t) => t.trim());
      item.hidden = tag !== "" && !tags.includes(tag);
    }
  };
  document.getElementById("tag-find")?.addEventListener("input", (e) => find(e.target.value.trim()));
  for (const link of document.querySelectorAll(".find-tag")) link.addEventListener("click", (e) => { e.preventDefault(); document.getElementById("tag-find").value = link.textContent; find(link.textContent); });
}

async function initAutoCaption() {
  const box = document.getElementById("autocaption");
  if (!box) return;
  const kinds = (await api("GET", "/api/caption-kinds")).data.kinds || [];
  const select = document.getElementById("caption-kind");
  const options = document.getElementById("caption-options");
  const out = document.getElementById("caption-progress");
  if (!kinds.length) {
    box.replaceChildren(el("p", { class: "note", text: "No caption kind is installed (pip install loraplug-caption: wd14, blip)." }));
    return;
  }
  for (const k of kinds) select.append(el("option", { value: k.name, text: `${k.name} — ${k.distribution}: ${k.summary}`.slice(0, 90) }));
  const show = () => {
    const kind = kinds.find((k) => k.name === select.value);
    options.replaceChildren(...kind.fields.map((f) => NewRun.input("caption", f, undefined)));
  };
  select.addEventListener("change", show);
  show();
  const poll = async () => {
    const { data } = await api("GET", "/api/autocaption");
    if (data.state === "running") { out.textContent = `captioning… ${data.done}/${data.total}`; setTimeout(poll, 1000); }
    else if (data.state === "failed") out.replaceChildren(el("span", { class: "error", text: data.error }));
    else if (data.state === "finished") location.reload();
  };
  document.getElementById("caption-run").addEventListener("click", async () => {
    const values = {};
    for (const input of options.querySelectorAll("[data-key]")) {
      if (input.type === "checkbox") { if (input.checked !== (input.dataset.default === "1")) values[input.dataset.key] = input.checked; }
      else if (input.value.trim() !== "") values[input.dataset.key] = input.value;
    }
    const body = { path: box.dataset.folder, kind: select.value, options: values, prefix: document.getElementById("caption-prefix").value, overwrite: document.getElementById("caption-overwrite").checked };
    let response = await api("POST", "/api/autocaption", body);
    if (response.status === 409 && confirm(response.data.error)) response = await api("POST", "/api/autocaption", { ...body, confirm: true });
    if (!response.ok) { out.replaceChildren(el("span", { class: "error", text: errorText(response.data) })); return; }
    poll();
  });
}

const PAGES = { new: () => NewRun.init(), run: () => RunPage.init(), runs: initRuns, compare: initCompare, dataset: initDataset };
(PAGES[document.body.dataset.page] || (() => {}))();
