// mcdrop web example: draw a digit (or pick a sample), run T Monte Carlo dropout passes of the
// shipped CNN with onnxruntime-web's WebAssembly backend, show the mean, the spread of the passes
// and the UNCERTAIN verdict. Plain ES module, no framework, nothing from the network but this
// server: the model from ../../models/, onnxruntime-web from ../node_modules/ (npm ci in
// examples/), the reading, seeding, preprocessing and measures from ../lib/mcdrop.mjs.
//
// Standard files run on the wasm backend, not WebGPU or WebGL: only it runs the random ops
// (RandomUniformLike) the dropout masks come from. Portable files (docs/FORMAT.md: Portable
// profile; `cli.py convert --portable`) have none: their keep masks are built here from a mask
// seed (lib keepMasks), so they run on onnxruntime-web's WebGPU backend when the browser gives a
// WebGPU adapter, on wasm otherwise (?backend=wasm or webgpu forces one), with the same samples.
// One wasm thread, since a plain static server (python -m http.server) sends no
// cross-origin-isolation headers, so there is no SharedArrayBuffer.
//
// Test hook (tests/test_web_example.py, through examples/web/test/browser_check.mjs):
//   ?sample=digit_3&passes=1000&seed=1&samples=1   run that shipped sample on load; also
//   &stochastic=0 (the deterministic pass) and &model=cnn_calibrated (another file of models/);
//   &models=build/web-models/NAME/ reads the model from that folder instead (tests write portable
//   files there), &backend=auto|wasm|webgpu picks the backend of a portable file.
// When the run is over, <pre id="result-json"> holds the result as JSON (label, index,
// confidence, std, mean, variance, predictive_entropy, expected_entropy, mutual_information,
// uncertain, rule, rule_source, passes, stochastic, seed, and samples [T][classes] with
// samples=1) and document.body.dataset.state is "done"; on failure it is "error" and
// document.body.dataset.error holds the message. Without ?sample the state is "ready" once the
// model is loaded. window.mcdropRun(input, dims, {passes, stochastic, seed, samples}) runs an
// already preprocessed float32 batch (a flat array, dims [batch, ...]) and resolves to one
// result per input, with the same keys. window.mcdropLastInput is the model input of the page's
// last run ({data: flat array, dims}), for comparing the page's preprocessing.

const DIST = new URL("../node_modules/onnxruntime-web/dist/", import.meta.url);
const LIB = new URL("../lib/mcdrop.mjs", import.meta.url);
const MODELS = new URL("../../models/", import.meta.url);
const SHIPPED_MODELS = ["cnn", "cnn_calibrated", "cnn_int8", "mlp"];
const SAMPLES = ["digit_3", "digit_7", "digit_8", "ambiguous", "not_a_digit"];
const MAX_PASSES = 10000;
// Passes x batch per run are bounded like the Python runtime's chunking (max_chunk_bytes), so a
// large T never asks the 32-bit wasm heap for gigabytes: activation floats of one run at most.
const MAX_RUN_FLOATS = 64 * 1024 * 1024; // 256 MB of float32
const AUTO_RUN_DELAY_MS = 350;
const SERVE_HINT = "serve the repository root (python3 -m http.server 8000) and open http://localhost:8000/examples/web/";

// The drawing: strokes are kept as points (pad coordinates) so that the model input can be
// re-rendered centred and scaled like the training digits (sklearn's 8x8 digits, upscaled: they
// fill the height, ink thick and soft). These numbers were chosen on synthetic strokes with the
// Python runtime: the longer side of the stroke's bounding box 0.8 of the frame, a stroke 0.16 of
// the frame wide, a Gaussian blur of 1.5 model pixels.
const PAD_LINE_WIDTH = 22;
const FIT_BOX = 0.8;
const FIT_LINE = 0.16;
const FIT_BLUR = 1.5 / 28;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const state = {
  ort: null,
  mc: null,
  model: null, // {name, url, bytes, parsed, metadata, labels, session (fresh seeds, reused)}
  strokes: [],
  source: null, // {kind: "drawing"} | {kind: "sample", name, image}
  generation: 0,
  queue: Promise.resolve(),
};

// ---------------------------------------------------------------------------------------------
// Errors: one line in the page, and the state for tests.

function fail(err) {
  const message = String(err?.message ?? err).split("\n")[0];
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  document.body.dataset.error = message;
  document.body.dataset.state = "error";
  $("result-panel").setAttribute("aria-busy", "false");
  $("verdict-line").textContent = "No result.";
  console.warn(`mcdrop: ${message}`); // a warning: a test's console-error check is for unexpected ones
}

function clearError() {
  $("error").hidden = true;
  delete document.body.dataset.error;
}

window.addEventListener("unhandledrejection", (event) => fail(event.reason));

// ---------------------------------------------------------------------------------------------
// Loading

async function loadLibraries() {
  if (location.protocol === "file:") {
    throw new Error(`this page cannot load its model from a file:// URL: ${SERVE_HINT}`);
  }
  try {
    state.ort = await import(new URL("ort.wasm.min.mjs", DIST).href);
  } catch (err) {
    console.warn(err);
    throw new Error(`onnxruntime-web is missing (${DIST.pathname}ort.wasm.min.mjs did not load): run npm ci in examples/ and ${SERVE_HINT}`);
  }
  try {
    state.mc = await import(LIB.href);
  } catch (err) {
    console.warn(err);
    throw new Error(`${LIB.pathname} did not load: ${SERVE_HINT}`);
  }
  const { env } = state.ort;
  env.wasm.wasmPaths = DIST.href;
  env.wasm.numThreads = 1;
  env.wasm.proxy = false;
  env.logLevel = "error";
}

function modelFolder() {
  const folder = new URLSearchParams(location.search).get("models");
  if (folder === null) return MODELS.href;
  // Only the tests' folder inside build/: the page never fetches anything else.
  if (!/^build\/web-models\/[A-Za-z0-9_-]+\/$/.test(folder)) throw new Error(`models ${JSON.stringify(folder)}: only build/web-models/NAME/ (for tests)`);
  return `../../${folder}`;
}

// The backend of a portable file: WebGPU where the browser gives an adapter (navigator.gpu needs
// a secure context: https or localhost), else wasm. Standard files always run on wasm.
async function chooseBackend(metadata) {
  const asked = params.get("backend") ?? "auto";
  if (!["auto", "wasm", "webgpu"].includes(asked)) throw new Error(`backend ${JSON.stringify(asked)}: choose auto, wasm or webgpu`);
  if (!metadata.portable) {
    if (asked === "webgpu") throw new Error("WebGPU runs portable files only (no random ops): cli.py convert --portable");
    return "wasm";
  }
  if (asked === "wasm") return "wasm";
  const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
  if (adapter) return "webgpu";
  if (asked === "webgpu") throw new Error("this browser gives no WebGPU adapter");
  return "wasm";
}

function modelName() {
  const name = (params.get("model") || "cnn").replace(/\.onnx$/, "");
  // Only a plain file name inside models/: the page never fetches anything else.
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(name)) throw new Error(`model ${JSON.stringify(name)}: give the name of a file in models/, e.g. ?model=cnn_calibrated`);
  return name;
}

async function loadModel(name) {
  const url = new URL(`${name}.onnx`, new URL(modelFolder(), import.meta.url));
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new Error(`the model ${url.pathname} did not load (${err.message}): ${SERVE_HINT}`);
  }
  if (!response.ok) {
    throw new Error(`the model ${url.pathname} did not load (HTTP ${response.status}): ${SERVE_HINT}`);
  }
  const bytes = new Uint8Array(await response.arrayBuffer());
  const parsed = state.mc.readModelFile(bytes);
  const { metadata } = parsed;
  const output = metadata.outputs[0];
  if (!state.mc.CATEGORICAL_HEADS.includes(output.head)) throw new Error(`${name}.onnx has a ${output.head} head; this page shows class probabilities (softmax or logits heads)`);
  if (metadata.inputs.length !== 1) throw new Error(`${name}.onnx takes ${metadata.inputs.length} inputs; this page feeds one image`);
  if (!metadata.preprocessing) throw new Error(`${name}.onnx has no image preprocessing in its metadata`);
  if (state.model?.session) await state.model.session.release();
  const classes = output.shape.at(-1);
  const backend = await chooseBackend(metadata);
  if (backend === "webgpu" && !state.ortWebGPU) {
    // onnxruntime-web's WebGPU build (its wasm backend too); its tensors go to its own sessions.
    state.ortWebGPU = await import(new URL("ort.webgpu.min.mjs", DIST).href);
    Object.assign(state.ortWebGPU.env.wasm, { wasmPaths: DIST.href, numThreads: 1, proxy: false });
    state.ortWebGPU.env.logLevel = "error";
  }
  state.model = {
    name, url, bytes, parsed, metadata, backend,
    ort: backend === "webgpu" ? state.ortWebGPU : state.ort,
    labels: output.labels ?? Array.from({ length: classes }, (_, i) => String(i)),
  };
  state.model.session = await createSession(bytes, parsed, undefined);
  $("passes").value = params.get("passes") ?? metadata.default_passes;
  const pre = metadata.preprocessing;
  $("status").textContent = `${name}.onnx (${(bytes.length / 1e6).toFixed(1)} MB, ${metadata.stochastic_layers.length} dropout layers, `
    + `input ${pre.width}\u00d7${pre.height} ${pre.color_mode}) \u00b7 onnxruntime-web ${state.ort.env.versions?.web ?? ""}, `
    + (backend === "webgpu" ? "WebGPU backend (portable file)" : `WebAssembly backend, 1 thread${metadata.portable ? " (portable file)" : ""}`);
}

// A session of the file with fresh seeds for its random nodes; `seed` (an integer) repeats them.
// Within one session every run draws new masks, so one seeded run reproduces only on a new session.
async function createSession(bytes, parsed, seed) {
  const { mc, model } = state;
  if (model.metadata.portable) { // no random node to seed: its masks are fed
    // logSeverityLevel 3: onnxruntime warns at every WebGPU session that it keeps shape ops on the CPU.
    return model.ort.InferenceSession.create(bytes, { executionProviders: [model.backend], graphOptimizationLevel: "all",
      logSeverityLevel: 3 });
  }
  const seeded = mc.withFreshSeeds(bytes, { seed, multiplier: mc.MINSTD.wasm, parsed });
  return model.ort.InferenceSession.create(seeded, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
}

// A portable file's runs: T passes each (the file's), keep masks of rows done .. done + T - 1 of
// the mask set `seed` (a fresh one when null), the last run's extra passes dropped; the batch
// must be the file's when it fixes one. (docs/FORMAT.md: Portable profile.)
async function portableRuns(x, passes, stochastic, seed, onProgress) {
  const { mc, model } = state;
  const { metadata, ort } = model;
  const { passes: T, batch: B, baked } = metadata.portable;
  if (B !== null && x.dims[0] !== B) throw new Error(`this portable file runs batches of ${B}; got ${x.dims[0]}`);
  if (baked && seed !== null && seed !== undefined && seed !== baked.mask_seed) throw new Error(`this file holds the baked mask set of seed ${baked.mask_seed}`);
  if (baked && passes > T) throw new Error(`this file holds ${T} baked passes; asked for ${passes}`);
  const maskSeed = seed ?? Math.floor(Math.random() * 2 ** 53);
  const prefix = metadata.outputs[0].prefix;
  let joined = null, per = 0;
  for (let done = 0; done < passes; done += T) {
    const masks = baked ? undefined : mc.keepMasks(metadata, maskSeed, { first: stochastic ? done : 0, count: T });
    const out = await model.session.run(mc.feeds(ort, x, { stochastic, masks }, metadata), [`${prefix}samples`]);
    const part = out[`${prefix}samples`];
    const data = await part.getData();
    per = data.length / T;
    if (!joined) joined = new Float32Array(passes * per);
    joined.set(data.subarray(0, Math.min(T, passes - done) * per), done * per);
    part.dispose?.();
    onProgress?.(Math.min(done + T, passes), passes);
  }
  return { joined, classes: per / x.dims[0] };
}

// ---------------------------------------------------------------------------------------------
// Running: T passes in runs of bounded size, their samples joined, then the lib's measures.

async function predict(x, { passes, stochastic = true, seed = null, samples = false, onProgress } = {}) {
  const { ort, mc, model } = state;
  const { metadata } = model;
  passes = stochastic ? passes : 1;
  if (!Number.isSafeInteger(passes) || passes < 1 || passes > MAX_PASSES) {
    throw new Error(`passes must be a whole number from 1 to ${MAX_PASSES}`);
  }
  const batch = x.dims[0];
  const perPass = Math.max(1, (metadata.activation_floats_per_sample ?? 0) * batch);
  const step = Math.max(1, Math.min(passes, Math.floor(MAX_RUN_FLOATS / perPass)));
  const fresh = seed !== null && seed !== undefined;
  const portable = Boolean(metadata.portable);
  const session = fresh && !portable ? await createSession(model.bytes, model.parsed, seed) : model.session;
  const prefix = metadata.outputs[0].prefix;
  const started = performance.now();
  let joined = null, classes = 0;
  if (portable) ({ joined, classes } = await portableRuns(x, passes, stochastic, seed, onProgress));
  else try {
    for (let done = 0; done < passes; done += step) {
      const count = Math.min(step, passes - done);
      const out = await session.run(mc.feeds(ort, x, { passes: count, stochastic }, metadata), [`${prefix}samples`]);
      const part = out[`${prefix}samples`];
      classes = Number(part.dims[2]);
      if (!joined) joined = new Float32Array(passes * batch * classes);
      joined.set(part.data, done * batch * classes);
      part.dispose?.();
      onProgress?.(done + count, passes);
    }
  } finally {
    if (fresh && !portable) await session.release();
  }
  const elapsed = performance.now() - started;
  if (!joined.every(Number.isFinite)) throw new Error("the model gave NaN or infinite outputs");
  const all = { data: joined, dims: [passes, batch, classes] };
  // The rule may test a calibrated file's single-pass scores: from one plain run, as in Python.
  const outputs = { [`${prefix}samples`]: all, ...await mc.singlePassOutputs(ort, model.session, x, metadata) };
  const summary = mc.summarize(outputs, metadata);
  return summary.map((r, b) => {
    const result = {
      label: r.label, index: r.index, confidence: r.confidence, std: r.std,
      mean: r.mean, variance: r.variance,
      predictive_entropy: r.predictive_entropy, expected_entropy: r.expected_entropy,
      mutual_information: r.mutual_information, uncertain: r.uncertain,
      rule: summary.ruleText, rule_source: summary.ruleSource,
      passes, stochastic, seed: fresh ? seed : null,
      model: `${model.name}.onnx`, elapsed_ms: Math.round(elapsed), backend: model.backend,
    };
    if (r.prediction_set) result.prediction_set = r.prediction_set;
    // Per pass of this input, [T][classes]: for the plot, and for tests with samples=1.
    const perPass = mc.passesOf(all, b);
    Object.defineProperty(result, "passSamples", { value: perPass, enumerable: false });
    if (samples) result.samples = perPass;
    return result;
  });
}

// Runs one at a time (a session runs one call at a time).
function enqueue(job) {
  const run = state.queue.then(job);
  state.queue = run.catch(() => {});
  return run;
}

function readPasses() {
  const value = $("passes").value.trim();
  const passes = value === "" ? state.model.metadata.default_passes : Number(value);
  if (!Number.isSafeInteger(passes) || passes < 1 || passes > MAX_PASSES) {
    throw new Error(`passes must be a whole number from 1 to ${MAX_PASSES}`);
  }
  return passes;
}

function readSeed() {
  const value = $("seed").value.trim();
  if (value === "") return null;
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) throw new Error("the seed is a whole number >= 0 (empty: fresh seeds each run)");
  return Number(value);
}

// Runs what is on the pad now (the drawing or the chosen sample) and shows it. A newer request
// makes a queued one moot.
function runCurrent({ stochastic = true, samples = false } = {}) {
  const generation = ++state.generation;
  return enqueue(async () => {
    if (generation !== state.generation) return null;
    if (!state.source || (state.source.kind === "drawing" && !state.strokes.length)) {
      showEmpty();
      return null;
    }
    clearError();
    const passes = readPasses(), seed = readSeed();
    const x = state.source.kind === "sample" ? sampleInput(state.source.image) : drawingInput();
    showSeen(x);
    window.mcdropLastInput = { data: Array.from(x.data), dims: x.dims };
    document.body.dataset.state = "running";
    $("result-panel").setAttribute("aria-busy", "true");
    const count = stochastic ? passes : 1;
    $("verdict-line").textContent = `Running ${count} pass${count === 1 ? "" : "es"}\u2026`;
    const [result] = await predict(x, {
      passes, stochastic, seed, samples,
      onProgress: (done, total) => { if (total > done) $("verdict-line").textContent = `Running passes\u2026 ${done} of ${total}`; },
    });
    if (generation !== state.generation) return null;
    result.input = state.source.kind === "sample" ? state.source.name : "drawing";
    show(result);
    $("result-json").textContent = JSON.stringify(result);
    document.body.dataset.state = "done";
    return result;
  }).catch((err) => {
    fail(err);
    return null;
  });
}

// ---------------------------------------------------------------------------------------------
// Inputs: a shipped sample at its native size (exact pixels), or the drawing.

async function loadImage(url) {
  const image = new Image();
  image.src = url;
  try {
    await image.decode();
  } catch {
    throw new Error(`the sample ${new URL(url).pathname} did not load: ${SERVE_HINT}`);
  }
  return image;
}

function pixelsOf(canvas) {
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const { data, width, height } = ctx.getImageData(0, 0, canvas.width, canvas.height);
  return { data, width, height, channels: 4 };
}

function sampleInput(image) {
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(image, 0, 0); // unscaled: the pixels stay exact; preprocessImage resizes if needed
  return state.mc.preprocessImage(pixelsOf(canvas), state.model.metadata);
}

function drawingInput() {
  const pad = $("pad");
  if (!$("fit").checked) return state.mc.preprocessImage(pixelsOf(pad), state.model.metadata);
  const size = pad.width;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, size, size);
  const points = state.strokes.flat();
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  // A dot or a tiny scribble is not blown up to the full frame.
  const scale = (FIT_BOX * size) / Math.max(x1 - x0, y1 - y0, size / 6);
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  ctx.filter = `blur(${(FIT_BLUR * size).toFixed(1)}px)`;
  strokePaths(ctx, state.strokes, (p) => [(p[0] - cx) * scale + size / 2, (p[1] - cy) * scale + size / 2], FIT_LINE * size);
  return state.mc.preprocessImage(pixelsOf(canvas), state.model.metadata);
}

function strokePaths(ctx, strokes, map, width) {
  ctx.strokeStyle = ctx.fillStyle = "#fff";
  ctx.lineWidth = width;
  ctx.lineCap = ctx.lineJoin = "round";
  for (const stroke of strokes) {
    const pts = stroke.map(map);
    ctx.beginPath();
    ctx.moveTo(...pts[0]);
    if (pts.length === 1) ctx.lineTo(pts[0][0] + 0.01, pts[0][1]);
    for (let i = 1; i < pts.length - 1; i++) {
      // Smooth: quadratic curves through the midpoints.
      const [mx, my] = [(pts[i][0] + pts[i + 1][0]) / 2, (pts[i][1] + pts[i + 1][1]) / 2];
      ctx.quadraticCurveTo(pts[i][0], pts[i][1], mx, my);
    }
    if (pts.length > 1) ctx.lineTo(...pts.at(-1));
    ctx.stroke();
  }
}

// The model's view, as a 28x28 grey picture (min to max of the input).
function showSeen(x) {
  const canvas = $("seen");
  const pre = state.model.metadata.preprocessing;
  canvas.width = pre.width;
  canvas.height = pre.height;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(pre.width, pre.height);
  const depth = pre.color_mode === "grayscale" ? 1 : 3;
  let lo = Infinity, hi = -Infinity;
  for (const v of x.data) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const span = hi > lo ? hi - lo : 1;
  for (let p = 0; p < pre.width * pre.height; p++) {
    for (let c = 0; c < 3; c++) image.data[p * 4 + c] = Math.round((255 * (x.data[p * depth + (depth === 1 ? 0 : c)] - lo)) / span);
    image.data[p * 4 + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

// ---------------------------------------------------------------------------------------------
// The drawing pad (pointer events: mouse, pen and touch alike)

function setupPad() {
  const pad = $("pad");
  const ctx = pad.getContext("2d", { willReadFrequently: true });
  let current = null, timer = null;
  const at = (event) => {
    const box = pad.getBoundingClientRect();
    return [((event.clientX - box.left) * pad.width) / box.width, ((event.clientY - box.top) * pad.height) / box.height];
  };
  const redraw = () => {
    ctx.filter = "none";
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
    strokePaths(ctx, state.strokes, (p) => p, PAD_LINE_WIDTH);
  };
  state.redrawPad = redraw;
  pad.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 || !state.model) return;
    event.preventDefault();
    try {
      pad.setPointerCapture(event.pointerId); // keep the stroke when it leaves the pad
    } catch {
      // a pointer the browser no longer tracks: draw without capture
    }
    clearTimeout(timer);
    if (state.source?.kind === "sample") clearPad();
    state.source = { kind: "drawing" };
    markSample(null);
    current = [at(event)];
    state.strokes.push(current);
    redraw();
  });
  pad.addEventListener("pointermove", (event) => {
    if (!current) return;
    const coalesced = event.getCoalescedEvents?.() ?? [];
    for (const e of coalesced.length ? coalesced : [event]) current.push(at(e)); // all points of a fast stroke
    redraw();
  });
  const end = () => {
    if (!current) return;
    current = null;
    clearTimeout(timer);
    timer = setTimeout(() => runCurrent(), AUTO_RUN_DELAY_MS);
  };
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);
  pad.addEventListener("keydown", (event) => {
    if (event.key === "Delete" || event.key === "Backspace" || event.key === "Escape") clearPad();
  });
  redraw();
}

function clearPad() {
  state.strokes = [];
  state.source = null;
  state.generation++;
  markSample(null);
  state.redrawPad();
  $("seen").getContext("2d").clearRect(0, 0, $("seen").width, $("seen").height);
  showEmpty();
}

function markSample(name) {
  for (const button of document.querySelectorAll(".sample")) button.setAttribute("aria-pressed", String(button.dataset.sample === name));
}

async function chooseSample(name, { stochastic = true } = {}) {
  if (!SAMPLES.includes(name)) throw new Error(`no sample ${JSON.stringify(name)}; the samples are ${SAMPLES.join(", ")}`);
  const image = await loadImage(new URL(`samples/${name}.png`, MODELS).href);
  state.strokes = [];
  state.source = { kind: "sample", name, image };
  markSample(name);
  const pad = $("pad");
  const ctx = pad.getContext("2d");
  ctx.filter = "none";
  ctx.imageSmoothingEnabled = false; // show the 28x28 pixels as they are
  ctx.drawImage(image, 0, 0, pad.width, pad.height);
  return runCurrent({ stochastic, samples: params.get("samples") === "1" });
}

function setupControls() {
  const list = $("sample-list");
  for (const name of SAMPLES) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.dataset.sample = name;
    button.setAttribute("aria-pressed", "false");
    const img = document.createElement("img");
    img.src = new URL(`samples/${name}.png`, MODELS).href;
    img.alt = "";
    const caption = document.createElement("span");
    caption.textContent = name.replace(/_/g, " ");
    button.append(img, caption);
    button.addEventListener("click", () => chooseSample(name).catch(fail));
    list.append(button);
  }
  $("clear").addEventListener("click", clearPad);
  $("run").addEventListener("click", () => runCurrent());
  for (const id of ["passes", "seed", "fit"]) $(id).addEventListener("change", () => { if (state.source) runCurrent(); });
  const select = $("model");
  const current = modelName();
  for (const name of SHIPPED_MODELS.includes(current) ? SHIPPED_MODELS : [...SHIPPED_MODELS, current]) {
    select.append(new Option(`${name}.onnx`, name, name === current, name === current));
  }
  select.addEventListener("change", () => {
    const url = new URL(location.href);
    url.searchParams.set("model", select.value);
    url.searchParams.delete("passes");
    location.assign(url); // a clean start: another file, its own default passes
  });
}

// ---------------------------------------------------------------------------------------------
// Showing a result

const fmt = (v, digits = 3) => (Math.abs(v) < 0.0005 && v !== 0 ? v.toExponential(1) : v.toFixed(digits));

function showEmpty() {
  $("label").textContent = "\u2013";
  $("verdict-line").textContent = "Draw a digit or pick a sample.";
  $("rule").textContent = "";
  renderBars(null);
  $("spread").querySelectorAll(":scope > :not(title)").forEach((n) => n.remove());
  $("spread-hint").textContent = "";
  for (const id of ["m-confidence", "m-std", "m-mi", "m-pe", "m-ee", "m-time"]) $(id).textContent = "\u2013";
  $("result-panel").setAttribute("aria-busy", "false");
  document.body.dataset.state = "ready";
}

function show(result) {
  $("result-panel").setAttribute("aria-busy", "false");
  $("label").textContent = result.label;
  const line = $("verdict-line");
  const badge = document.createElement("span");
  badge.className = `badge ${result.uncertain ? "uncertain" : "ok"}`;
  badge.textContent = result.uncertain ? "UNCERTAIN" : "confident";
  const what = result.stochastic
    ? `${result.label} with confidence ${fmt(result.confidence)} over ${result.passes} passes`
    : `${result.label} with confidence ${fmt(result.confidence)}, deterministic pass (dropout off)`;
  line.replaceChildren(badge, document.createTextNode(` ${what}`));
  const rule = $("rule");
  const code = document.createElement("code");
  code.textContent = result.rule;
  rule.replaceChildren(document.createTextNode("UNCERTAIN if "), code, document.createTextNode(` (${result.rule_source} rule)`));
  renderBars(result);
  renderSpread(result);
  $("m-confidence").textContent = fmt(result.confidence);
  $("m-std").textContent = fmt(result.std);
  $("m-mi").textContent = fmt(result.mutual_information);
  $("m-pe").textContent = fmt(result.predictive_entropy);
  $("m-ee").textContent = fmt(result.expected_entropy);
  $("m-time").textContent = `${result.passes}, ${(result.elapsed_ms / 1000).toFixed(2)} s`;
}

function renderBars(result) {
  const labels = state.model?.labels ?? [];
  const rows = labels.map((label, i) => {
    const p = result ? result.mean[i] : 0, sd = result ? Math.sqrt(result.variance[i]) : 0;
    const row = document.createElement("div");
    row.className = `bar-row${result && i === result.index ? " top" : ""}`;
    row.setAttribute("role", "listitem");
    row.setAttribute("aria-label", result ? `${label}: ${(100 * p).toFixed(1)} percent, std ${sd.toFixed(3)}` : `${label}: no result`);
    const name = document.createElement("span");
    name.className = "bar-label";
    name.textContent = label;
    const track = document.createElement("span");
    track.className = "bar-track";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${(100 * p).toFixed(2)}%`;
    track.append(fill);
    if (result && sd > 0.002) { // \u00b11 std of the passes
      const err = document.createElement("span");
      err.className = "bar-err";
      const lo = Math.max(0, p - sd), hi = Math.min(1, p + sd);
      err.style.left = `${(100 * lo).toFixed(2)}%`;
      err.style.width = `${(100 * (hi - lo)).toFixed(2)}%`;
      track.append(err);
    }
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = result ? p.toFixed(3) : "";
    value.setAttribute("aria-hidden", "true");
    row.append(name, track, value);
    return row;
  });
  $("bars").replaceChildren(...rows);
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// One dot per pass for each of the three most likely classes: x the pass's probability, jittered
// vertically within the class's row; a bar at the mean.
function renderSpread(result) {
  const plot = $("spread");
  plot.querySelectorAll(":scope > :not(title)").forEach((n) => n.remove());
  const order = result.mean.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 3).map(([, i]) => i);
  const left = 34, right = 446, rowHeight = 30, top = 8;
  const width = right - left;
  const xOf = (p) => left + p * width;
  const T = result.passes;
  const opacity = Math.min(0.85, Math.max(0.18, 4 / Math.sqrt(T)));
  const nodes = [];
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    nodes.push(svg("line", { x1: xOf(tick), x2: xOf(tick), y1: top - 4, y2: top + 3 * rowHeight, class: "axis" }));
    nodes.push(svg("text", { x: xOf(tick), y: top + 3 * rowHeight + 13, "text-anchor": "middle", class: "tick" }, String(tick)));
  }
  order.forEach((cls, row) => {
    const y = top + row * rowHeight + rowHeight / 2;
    const colour = `var(--c${row})`;
    nodes.push(svg("text", { x: left - 10, y: y + 4, "text-anchor": "end", class: "row-label" }, state.model.labels[cls]));
    const dots = svg("g", { fill: colour, "fill-opacity": opacity });
    result.passSamples.forEach((pass, t) => {
      const jitter = ((t * 0.6180339887) % 1 - 0.5) * (rowHeight - 12);
      dots.append(svg("circle", { cx: xOf(pass[cls]).toFixed(1), cy: (y + jitter).toFixed(1), r: 2.4 }));
    });
    nodes.push(dots);
    const m = xOf(result.mean[cls]);
    nodes.push(svg("line", { x1: m, x2: m, y1: y - rowHeight / 2 + 2, y2: y + rowHeight / 2 - 2, stroke: colour, class: "mean" }));
  });
  plot.append(...nodes);
  $("spread-hint").textContent = result.stochastic
    ? `one dot per pass (${T}) for the top 3 classes, a bar at the mean`
    : "the deterministic pass: one dot per class";
  plot.querySelector("title").textContent = `Per-pass probabilities of classes ${order.map((i) => state.model.labels[i]).join(", ")}`;
}

// ---------------------------------------------------------------------------------------------
// The test hook's direct entry: an already preprocessed batch.

window.mcdropRun = (input, dims, { passes, stochastic = true, seed = null, samples = false } = {}) => enqueue(async () => {
  if (!state.model) throw new Error("the model is not loaded");
  const data = Float32Array.from(input);
  const expected = dims.reduce((a, b) => a * b, 1);
  if (data.length !== expected) throw new Error(`input of ${data.length} values for dims [${dims}] (${expected})`);
  const results = await predict({ data, dims }, {
    passes: passes ?? state.model.metadata.default_passes, stochastic, seed, samples,
  });
  return results;
});

// ---------------------------------------------------------------------------------------------

async function main() {
  setupControls();
  setupPad();
  if (params.get("seed") !== null) $("seed").value = params.get("seed");
  await loadLibraries();
  await loadModel(modelName());
  showEmpty();
  const sample = params.get("sample");
  if (sample !== null) await chooseSample(sample, { stochastic: params.get("stochastic") !== "0" });
}

main().catch(fail);
