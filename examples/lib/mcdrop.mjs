// mcdrop for JavaScript: read an mcdrop ONNX file, give it fresh dropout seeds, build shared mask
// sets, turn an image into its input, and summarize what onnxruntime returns. One ES module
// without Node-only APIs, so the same file serves onnxruntime-node (examples/node/) and
// onnxruntime-web in a browser.
//
// The file format is docs/FORMAT.md; each part below mirrors the Python runtime module it names.

// ---------------------------------------------------------------------------------------------
// Reading the file (runtime/format/onnx_file.py)
//
// A small protobuf walker: it finds the "mcdrop" metadata and every random node with the byte
// offset of its float `seed` attribute, without an ONNX or protobuf package. Field numbers are
// those of onnx/onnx.proto.

const METADATA_KEY = "mcdrop";
const READABLE_FORMATS = [1, 2, 3];
const MASKS_FROM_FORMAT = 3; // files of this format and later take the `masks` input
const RANDOM_OPS = ["RandomUniformLike", "RandomNormalLike", "RandomUniform", "RandomNormal", "Bernoulli", "Multinomial"];
const MAX_DEPTH = 32; // graphs nest through If / Loop / Scan attributes; real models go a few deep
const VARINT = 0, FIXED64 = 1, LENGTH = 2, FIXED32 = 5;
const MODEL = { graph: 7, metadata: 14, training: 20, functions: 25 };
const GRAPH = { node: 1 };
const NODE = { name: 3, opType: 4, attribute: 5, domain: 7 };
const ATTR = { name: 1, f: 2, g: 6, graphs: 11 };
const ENTRY = { key: 1, value: 2 };
const TRAINING_GRAPHS = [1, 2]; // TrainingInfoProto: initialization, algorithm
const FUNCTION_NODE = 7;

class WireError extends Error {}

const utf8 = new TextDecoder("utf-8", { fatal: true });

function text(bytes, [start, end]) {
  try {
    return utf8.decode(bytes.subarray(start, end));
  } catch {
    throw new WireError("a name is not UTF-8");
  }
}

function varint(bytes, position, end) {
  let result = 0;
  for (let shift = 0; ; shift += 7) {
    if (position >= end || shift > 63) throw new WireError(`bad varint at byte ${position}`);
    const byte = bytes[position++];
    result += (byte & 0x7f) * 2 ** shift; // lengths and keys stay well within 2**53
    if (byte < 0x80) return [result, position];
  }
}

// Each field of bytes[start:end] as {number, wire, value, end}: value is a number for varints and
// fixed32 (as float32), and the [start, end) span of the payload for length-delimited fields.
function* fields(bytes, start, end) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let position = start;
  while (position < end) {
    const fieldStart = position;
    let key, value;
    [key, position] = varint(bytes, position, end);
    const number = Math.floor(key / 8), wire = key % 8;
    if (number === 0) throw new WireError(`field number 0 at byte ${fieldStart}`);
    if (wire === VARINT) {
      [value, position] = varint(bytes, position, end);
    } else if (wire === FIXED64) {
      if (position + 8 > end) throw new WireError(`truncated field at byte ${fieldStart}`);
      value = null;
      position += 8;
    } else if (wire === LENGTH) {
      let length;
      [length, position] = varint(bytes, position, end);
      if (position + length > end) throw new WireError(`field at byte ${fieldStart} runs past its message`);
      value = [position, position + length];
      position += length;
    } else if (wire === FIXED32) {
      if (position + 4 > end) throw new WireError(`truncated field at byte ${fieldStart}`);
      value = view.getFloat32(position, true);
      position += 4;
    } else {
      throw new WireError(`wire type ${wire} at byte ${fieldStart}`);
    }
    yield { number, wire, value, end: position };
  }
}

function walkGraph(bytes, span, found, depth) {
  if (depth > MAX_DEPTH) throw new WireError(`graphs nested more than ${MAX_DEPTH} deep`);
  for (const f of fields(bytes, ...span)) {
    if (f.wire === LENGTH && f.number === GRAPH.node) walkNode(bytes, f.value, found, depth);
  }
}

function walkNode(bytes, span, found, depth) {
  let name = "", opType = "", domain = "", seed = null, seedOffset = null;
  for (const f of fields(bytes, ...span)) {
    if (f.wire !== LENGTH) continue;
    if (f.number === NODE.name) name = text(bytes, f.value);
    else if (f.number === NODE.opType) opType = text(bytes, f.value);
    else if (f.number === NODE.domain) domain = text(bytes, f.value);
    else if (f.number === NODE.attribute) {
      const attribute = walkAttribute(bytes, f.value, found, depth);
      if (attribute) [seed, seedOffset] = attribute;
    }
  }
  if (RANDOM_OPS.includes(opType) && (domain === "" || domain === "ai.onnx")) {
    found.randomNodes.push({ name, opType, seed, seedOffset });
  }
}

// Walks the subgraphs an attribute holds; returns [seed, offset] for a float attribute "seed".
function walkAttribute(bytes, span, found, depth) {
  let name = null, value = null, offset = null;
  for (const f of fields(bytes, ...span)) {
    if (f.number === ATTR.name && f.wire === LENGTH) name = text(bytes, f.value);
    else if (f.number === ATTR.f && f.wire === FIXED32) [value, offset] = [f.value, f.end - 4];
    else if (f.wire === LENGTH && (f.number === ATTR.g || f.number === ATTR.graphs)) {
      walkGraph(bytes, f.value, found, depth + 1);
    }
  }
  return name === "seed" && value !== null ? [value, offset] : null;
}

function walkEntry(bytes, span) {
  let key = "", value = [0, 0];
  for (const f of fields(bytes, ...span)) {
    if (f.wire !== LENGTH) continue;
    if (f.number === ENTRY.key) key = text(bytes, f.value);
    else if (f.number === ENTRY.value) value = f.value;
  }
  return [key, value];
}

/**
 * {metadata, randomNodes, maskLayout} of an ONNX file's bytes: the "mcdrop" metadata (defaults
 * filled as docs/FORMAT.md says), the random nodes with the byte offset of each one's float seed
 * (null: no float seed attribute), and the mask layout (maskLayout: null where the file takes no
 * mask set). Throws an Error with a one-line message for bytes that are not ONNX or not an mcdrop
 * export.
 */
export function readModelFile(bytes) {
  if (!(bytes instanceof Uint8Array)) throw new Error("readModelFile needs the file's bytes as a Uint8Array");
  const found = { randomNodes: [], metadata: new Map(), hasGraph: false };
  try {
    for (const f of fields(bytes, 0, bytes.length)) {
      if (f.wire !== LENGTH) continue;
      if (f.number === MODEL.graph) {
        found.hasGraph = true;
        walkGraph(bytes, f.value, found, 1);
      } else if (f.number === MODEL.metadata) {
        const [key, span] = walkEntry(bytes, f.value);
        if (found.metadata.has(key)) throw new WireError(`metadata key ${JSON.stringify(key)} appears twice`);
        found.metadata.set(key, span);
      } else if (f.number === MODEL.training) {
        for (const g of fields(bytes, ...f.value)) {
          if (g.wire === LENGTH && TRAINING_GRAPHS.includes(g.number)) walkGraph(bytes, g.value, found, 1);
        }
      } else if (f.number === MODEL.functions) {
        for (const g of fields(bytes, ...f.value)) {
          if (g.wire === LENGTH && g.number === FUNCTION_NODE) walkNode(bytes, g.value, found, 1);
        }
      }
    }
  } catch (err) {
    if (err instanceof WireError) throw new Error(`not an ONNX file (malformed protobuf: ${err.message})`);
    throw err;
  }
  if (!found.hasGraph) throw new Error("not an ONNX file (no graph)");
  const span = found.metadata.get(METADATA_KEY);
  if (!span) throw new Error(`not an mcdrop export (no '${METADATA_KEY}' metadata); export it with \`python cli.py export\``);
  const metadata = parseMetadata(bytes.subarray(...span));
  return { metadata, randomNodes: found.randomNodes, maskLayout: maskLayout(metadata) };
}

// What a file written before these preprocessing fields existed means by their absence.
const PREPROCESSING_DEFAULTS = { channel_order: "rgb", mean: [0], std: [1], background: 0 };

// The metadata JSON with the defaults of files written before a field existed (docs/FORMAT.md:
// Metadata). Only what this module uses is checked; runtime/format/metadata.py checks everything.
function parseMetadata(raw) {
  let meta;
  try {
    meta = JSON.parse(utf8.decode(raw));
  } catch (err) {
    throw new Error(`broken '${METADATA_KEY}' metadata (${String(err.message).split("\n")[0]})`);
  }
  if (meta === null || typeof meta !== "object" || Array.isArray(meta)) {
    throw new Error(`broken '${METADATA_KEY}' metadata (not a JSON object)`);
  }
  if (!READABLE_FORMATS.includes(meta.format)) {
    const readable = `${READABLE_FORMATS.slice(0, -1).join(", ")} and ${READABLE_FORMATS.at(-1)}`;
    throw new Error(`broken '${METADATA_KEY}' metadata (format ${JSON.stringify(meta.format)}, this reader reads ${readable})`);
  }
  if (!Number.isInteger(meta.default_passes) || meta.default_passes < 1) {
    throw new Error(`broken '${METADATA_KEY}' metadata (default_passes must be an integer >= 1)`);
  }
  meta.inputs ??= [{ name: "input", shape: meta.input_shape }];
  meta.outputs ??= [{ name: "output", prefix: "", head: meta.head, labels: meta.labels ?? null, shape: meta.output_shape }];
  if (!Array.isArray(meta.inputs) || !meta.inputs.length || !Array.isArray(meta.outputs) || !meta.outputs.length) {
    throw new Error(`broken '${METADATA_KEY}' metadata (inputs and outputs must be non-empty lists)`);
  }
  for (const output of meta.outputs) {
    output.prefix ??= "";
    output.labels ??= null;
    output.calibration ??= null;
  }
  if (meta.preprocessing) {
    meta.preprocessing = { ...PREPROCESSING_DEFAULTS, ...meta.preprocessing };
  } else {
    meta.preprocessing = null;
  }
  meta.stochastic_layers ??= [];
  meta.masks ??= null;
  meta.portable ??= null;
  try {
    maskLayout(meta);
  } catch (err) {
    throw new Error(`broken '${METADATA_KEY}' metadata (${err.message})`);
  }
  return meta;
}

// ---------------------------------------------------------------------------------------------
// Fresh seeds (runtime/format/seeds.py)
//
// onnxruntime seeds each random node's minstd generator from its float `seed` attribute when the
// session is created, so without a rewrite every session of a file replays the same masks. A seed
// is a starting point on minstd's single cycle through 1..2**31-2; two seeds a distance d apart
// give the same stream shifted by d draws, so the seeds are spread around the cycle: stream j of n
// starts at a random spot in the first half of the j-th of n equal arcs (runtime/format/seeds.py says
// why not exactly even). Native onnxruntime (Linux, macOS) uses minstd_rand0, the wasm build of
// onnxruntime-web minstd_rand: same cycle idea, another multiplier.

export const MINSTD = { node: 16807, wasm: 48271 };
const MINSTD_MODULUS = 2 ** 31 - 1;

// Uniform integers in [0, n), n <= 2**32, from 32-bit words: seeded (SplitMix64) or crypto.
function randomSource(seed) {
  let next;
  if (seed === undefined || seed === null) {
    const buffer = new Uint32Array(64);
    let used = buffer.length;
    next = () => {
      if (used === buffer.length) {
        globalThis.crypto.getRandomValues(buffer);
        used = 0;
      }
      return buffer[used++];
    };
  } else {
    if (!(Number.isSafeInteger(seed) || typeof seed === "bigint") || seed < 0) {
      throw new Error(`seed must be an integer >= 0, got ${seed}`);
    }
    const MASK = (1n << 64n) - 1n;
    let state = BigInt(seed) & MASK;
    next = () => {
      state = (state + 0x9e3779b97f4a7c15n) & MASK;
      let z = state;
      z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK;
      z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK;
      return Number((z ^ (z >> 31n)) >> 32n);
    };
  }
  return (n) => {
    const limit = 2 ** 32 - (2 ** 32 % n); // rejection keeps every value equally likely
    for (;;) {
      const word = next();
      if (word < limit) return word % n;
    }
  };
}

function powMod(base, exponent, modulus) {
  let result = 1n, b = BigInt(base) % BigInt(modulus), e = BigInt(exponent);
  const m = BigInt(modulus);
  while (e > 0n) {
    if (e & 1n) result = (result * b) % m;
    b = (b * b) % m;
    e >>= 1n;
  }
  return Number(result);
}

/**
 * `count` seeds spread around minstd's cycle for the given multiplier (MINSTD.node or
 * MINSTD.wasm), each an integer that float32 holds exactly (the attribute is a float, cast back
 * to an integer state). `seed` (an integer) repeats the same seeds; without it they come from
 * crypto entropy. They do not equal the Python runtime's for the same seed.
 */
export function freshSeeds(count, { seed, multiplier = MINSTD.node } = {}) {
  if (!Number.isInteger(count) || count < 0) throw new Error(`count must be an integer >= 0, got ${count}`);
  if (!Number.isInteger(multiplier) || multiplier < 2 || multiplier >= MINSTD_MODULUS) {
    throw new Error(`multiplier must be a minstd multiplier such as ${MINSTD.node} or ${MINSTD.wasm}`);
  }
  if (count === 0) return [];
  const below = randomSource(seed);
  const cycle = MINSTD_MODULUS - 1;
  const arc = Math.floor(cycle / count);
  const start = below(cycle);
  const seeds = [];
  for (let j = 0; j < count; j++) {
    const position = (start + j * arc + below(Math.max(1, Math.floor(arc / 2)))) % cycle;
    let state = powMod(multiplier, position, MINSTD_MODULUS);
    // The first float32-exact state on from the spot: a few dozen steps at most.
    while (Math.fround(state) !== state) state = Number((BigInt(state) * BigInt(multiplier)) % BigInt(MINSTD_MODULUS));
    seeds.push(state);
  }
  return seeds;
}

/**
 * A copy of the file's bytes with each random node's 4 seed bytes (little-endian float32)
 * replaced by fresh seeds; nothing else changes, the length included. Call it before creating
 * each session. Throws for a random node without a float seed (it would replay its masks).
 * `parsed`: readModelFile(bytes) where the caller has it already, so the file is walked once.
 */
export function withFreshSeeds(bytes, { seed, multiplier = MINSTD.node, parsed } = {}) {
  const { randomNodes } = parsed ?? readModelFile(bytes);
  const unseeded = randomNodes.find((node) => node.seedOffset === null);
  if (unseeded) throw new Error(`random node '${unseeded.name}' has no float seed attribute; export the model again`);
  const out = bytes.slice();
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const seeds = freshSeeds(randomNodes.length, { seed, multiplier });
  randomNodes.forEach((node, i) => view.setFloat32(node.seedOffset, seeds[i], true));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Mask sets (runtime/format/mask_sets.py; docs/FORMAT.md: Mask sets)
//
// A shared mask set is T passes' worth of raw random values for every stochastic layer, fixed by
// one seed: fed as `masks` ([T, floats_per_pass]), pass t is the same sampled network for every
// input of the batch, so an input's result depends on (input, mask seed, T) alone and equals the
// Python runtime's. Row t is Philox4x64-10 with key (seed, 0) and counters (1, t, 0, 0),
// (2, t, 0, 0), ...: 4 words per block, each word a uniform (top 24 bits) or, Box-Muller, a normal
// value as its layer's distribution says.

const MASK_GENERATOR = "philox4x64-10";
const TWO_32 = 2 ** 32, INV_32 = 2 ** -32;
const U64 = (1n << 64n) - 1n;
// Philox4x64-10 (Salmon et al. 2011): the round multipliers and key increments, as uint32 halves.
const [M0_HI, M0_LO, M1_HI, M1_LO] = [0xd2e7470e, 0xe14c6c93, 0xca5a8263, 0x95121157];
const PHILOX_W = [0x9e3779b97f4a7c15n, 0xbb67ae8584caa73bn];
const PHILOX_ROUNDS = 10;

// The key before each of the 10 rounds, (seed, 0) + r * W modulo 2**64, as [k0 hi, k0 lo, k1 hi,
// k1 lo] per round: the same for every block of a set, so worked out once.
function roundKeys(seed) {
  const keys = new Float64Array(PHILOX_ROUNDS * 4);
  let k0 = seed, k1 = 0n;
  for (let r = 0; r < PHILOX_ROUNDS; r++) {
    keys.set([Number(k0 >> 32n), Number(k0 & 0xffffffffn), Number(k1 >> 32n), Number(k1 & 0xffffffffn)], r * 4);
    k0 = (k0 + PHILOX_W[0]) & U64;
    k1 = (k1 + PHILOX_W[1]) & U64;
  }
  return keys;
}

// Pass t's words w_0, w_1, ... (blocks with counters (1, t, 0, 0), (2, t, 0, 0), ...), 4 per
// block, as their high and low uint32 halves into hi[] and lo[] (whole blocks: their length is a
// multiple of 4). A round is
//   (c0, c1, c2, c3) -> (hi(M1*c2) ^ c1 ^ k0, lo(M1*c2), hi(M0*c0) ^ c3 ^ k1, lo(M0*c0)),
// every 64-bit value as two uint32 Numbers. Each 64 x 64 -> 128-bit product is four 32 x 32 -> 64
// partial products: the low half from Math.imul, the high half from the float64 product, whose
// rounding error (below 2**11) is far too small to move (a * b - low) / 2**32 off the whole number
// it truncates to after + 0.5. The column sums stay below 2**34: exact. Written out inline, it
// runs several times faster than BigInt.
function philoxRow(keys, t, hi, lo) {
  const tHi = Math.floor(t / TWO_32), tLo = t % TWO_32;
  for (let j = 1, at = 0; at < hi.length; j++, at += 4) {
    let c0h = 0, c0l = j, c1h = tHi, c1l = tLo, c2h = 0, c2l = 0, c3h = 0, c3l = 0; // blocks per row < 2**32
    for (let r = 0; r < PHILOX_ROUNDS * 4; r += 4) {
      // M1 * c2 = a:b:c:d (32-bit words, most significant first)
      let ll = Math.imul(c2l, M1_LO) >>> 0, llH = ((c2l * M1_LO - ll) * INV_32 + 0.5) >>> 0;
      let lh = Math.imul(c2l, M1_HI) >>> 0, lhH = ((c2l * M1_HI - lh) * INV_32 + 0.5) >>> 0;
      let hl = Math.imul(c2h, M1_LO) >>> 0, hlH = ((c2h * M1_LO - hl) * INV_32 + 0.5) >>> 0;
      let hh = Math.imul(c2h, M1_HI) >>> 0, hhH = ((c2h * M1_HI - hh) * INV_32 + 0.5) >>> 0;
      let s1 = llH + lh + hl, s1w = s1 >>> 0;
      let s2 = lhH + hlH + hh + (s1 - s1w) * INV_32, s2w = s2 >>> 0;
      const p1a = hhH + (s2 - s2w) * INV_32, p1b = s2w, p1c = s1w, p1d = ll;
      // M0 * c0 = a:b:c:d
      ll = Math.imul(c0l, M0_LO) >>> 0; llH = ((c0l * M0_LO - ll) * INV_32 + 0.5) >>> 0;
      lh = Math.imul(c0l, M0_HI) >>> 0; lhH = ((c0l * M0_HI - lh) * INV_32 + 0.5) >>> 0;
      hl = Math.imul(c0h, M0_LO) >>> 0; hlH = ((c0h * M0_LO - hl) * INV_32 + 0.5) >>> 0;
      hh = Math.imul(c0h, M0_HI) >>> 0; hhH = ((c0h * M0_HI - hh) * INV_32 + 0.5) >>> 0;
      s1 = llH + lh + hl; s1w = s1 >>> 0;
      s2 = lhH + hlH + hh + (s1 - s1w) * INV_32; s2w = s2 >>> 0;
      const p0a = hhH + (s2 - s2w) * INV_32, p0b = s2w, p0c = s1w, p0d = ll;
      c0h = (p1a ^ c1h ^ keys[r]) >>> 0; c0l = (p1b ^ c1l ^ keys[r + 1]) >>> 0;
      c1h = p1c; c1l = p1d;
      c2h = (p0a ^ c3h ^ keys[r + 2]) >>> 0; c2l = (p0b ^ c3l ^ keys[r + 3]) >>> 0;
      c3h = p0c; c3l = p0d;
    }
    hi[at] = c0h; lo[at] = c0l; hi[at + 1] = c1h; lo[at + 1] = c1l;
    hi[at + 2] = c2h; lo[at + 2] = c2l; hi[at + 3] = c3h; lo[at + 3] = c3l;
  }
}

// A deep ensemble's members (docs/FORMAT.md: Members): member k's columns of a pass's row,
// [mask_offset, mask_offset + mask_floats), come from its own seed, mask seed + k * this mod 2**64.
const MEMBER_SEED_STEP = 0x9e3779b97f4a7c15n;

// [{index, offset, floats}]: one per member, or the whole row for a single model.
function memberColumns(metadata, total) {
  const members = metadata.members;
  if (members === undefined || members === null) return [{ index: 0, offset: 0, floats: total }];
  let end = 0;
  const out = (Array.isArray(members) ? members : [null]).map((m, index) => {
    const { mask_offset: offset, mask_floats: floats } = m ?? {};
    if (offset !== end || !Number.isSafeInteger(floats) || floats < 0) throw new Error("members: each member's mask columns must follow the previous member's");
    end += floats;
    return { index, offset, floats };
  });
  if (end !== total) throw new Error(`the members' masks take ${end} floats per pass, the file's ${total}`);
  return out;
}

function checkMaskSeed(seed) {
  const ok = typeof seed === "bigint" ? seed >= 0n && seed <= U64 : Number.isSafeInteger(seed) && seed >= 0;
  if (!ok) throw new Error(`mask seed must be an integer from 0 to 2**64 - 1 (a BigInt above 2**53 - 1), got ${seed}`);
  return BigInt(seed);
}

/**
 * The mask layout a format 3 file declares: {floatsPerPass, entries: [{offset, shape, size,
 * distribution}]} (each stochastic layer's values at [offset, offset + size) of a pass's row), or
 * null where the file takes no mask set (older formats; noise shapes that depend on the input
 * size). Throws for a layout that does not add up, as runtime/format/mask_sets.py layout_from_metadata does.
 */
export function maskLayout(metadata) {
  const spec = metadata.masks;
  if (!(metadata.format >= MASKS_FROM_FORMAT) || spec === undefined || spec === null) return null;
  if (typeof spec !== "object" || spec.generator !== MASK_GENERATOR) throw new Error(`masks must name the generator ${MASK_GENERATOR}`);
  const total = spec.floats_per_pass;
  if (!Number.isSafeInteger(total) || total < 0) throw new Error("masks.floats_per_pass must be an integer >= 0");
  const entries = [];
  let end = 0;
  for (const layer of metadata.stochastic_layers ?? []) {
    const { mask_offset: offset, mask_shape: shape } = layer ?? {};
    if (offset !== end || !Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 1)) {
      throw new Error(`stochastic layer ${JSON.stringify(layer?.name)}: mask_offset and mask_shape must place its masks `
        + "right after the previous layer's");
    }
    const size = shape.reduce((product, d) => product * d, 1);
    entries.push({ offset, shape: [...shape], size, distribution: String(layer.distribution) });
    end += size;
  }
  if (end !== total) throw new Error(`masks.floats_per_pass is ${total} but the layers' masks take ${end}`);
  return { floatsPerPass: total, entries };
}

/**
 * Passes first .. first + count - 1 of the shared mask set `seed` (an integer 0 <= seed < 2**64:
 * a safe Number, or a BigInt) for the file whose metadata this is: a Float32Array of
 * count * floats_per_pass values, one pass's row after another, the `masks` feed of those passes
 * (feeds(ort, x, {passes: count, masks})). Equal to the Python runtime's
 * runtime/format/mask_sets.py draw(layout, seed, first, count), byte for byte. The shipped CNN's 50 passes
 * (4.4 million values) take about half a second in Node.
 */
export function maskSet(metadata, seed, { first = 0, count } = {}) {
  const layout = maskLayout(metadata);
  if (!layout) throw new Error("this file takes no mask set (its metadata has no masks layout): use independent masks");
  checkMaskSeed(seed);
  if (!Number.isSafeInteger(first) || first < 0) throw new Error(`first must be an integer >= 0, got ${first}`);
  if (!Number.isSafeInteger(count) || count < 0) throw new Error(`count must be an integer >= 0, got ${count}`);
  if (!Number.isSafeInteger(first + count)) throw new Error("first + count must stay below 2**53");
  const P = layout.floatsPerPass;
  const out = new Float32Array(count * P);
  for (const member of memberColumns(metadata, P)) {
    // An ensemble's member k draws its own columns from seed + k * MEMBER_SEED_STEP (runtime/format/members.py).
    const keys = roundKeys((checkMaskSeed(seed) + BigInt(member.index) * MEMBER_SEED_STEP) & U64);
    const entries = layout.entries.filter((e) => e.offset >= member.offset && e.offset < member.offset + member.floats);
    const hi = new Uint32Array(Math.ceil(member.floats / 4) * 4), lo = new Uint32Array(hi.length);
    for (let row = 0; row < count; row++) {
      philoxRow(keys, first + row, hi, lo);
      const base = row * P + member.offset;
      for (const { offset, size, distribution } of entries) {
        const start = offset - member.offset;
        if (distribution === "normal") {
          // Box-Muller on one word, in float64; the Float32Array rounds it to float32.
          for (let i = start; i < start + size; i++) {
            const u1 = (hi[i] + 1) * INV_32, u2 = lo[i] * INV_32;
            out[base + i] = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
          }
        } else {
          // Uniform: the top 24 bits, (w >> 40) * 2**-24, exact in float32.
          for (let i = start; i < start + size; i++) out[base + i] = (hi[i] >>> 8) * 2 ** -24;
        }
      }
    }
  }
  return out;
}

// A session's shared set's first passes are kept between predicts, up to KEPT_MASK_BYTES: drawing
// costs more than the passes (the shipped CNN's 50 passes: ~0.25 s to draw in Node, ~20 ms to run).
// The Python runtime keeps the same share of its default bound (runtime/mask_rows.py).
export const KEPT_MASK_BYTES = 64 * 2 ** 20;
const keptMasks = new WeakMap(); // session -> { seed, rows: Float32Array, filled: passes drawn }

/** How many passes of its shared set predict keeps for `session`, and of which mask seed. */
export function keptMaskPasses(session) {
  const kept = keptMasks.get(session);
  return kept ? { seed: kept.seed, passes: kept.filled } : { seed: null, passes: 0 };
}

/** maskSet's passes first .. first + count - 1 for predict on `session` (a file that takes a
 * set): the kept passes copied, the rest drawn. */
function sessionMaskSet(session, metadata, seed, { first = 0, count }) {
  const P = maskLayout(metadata).floatsPerPass, key = checkMaskSeed(seed);
  const keep = Math.floor(KEPT_MASK_BYTES / 4 / Math.max(1, P));
  let kept = keptMasks.get(session);
  if (!kept || kept.seed !== key) keptMasks.set(session, kept = { seed: key, rows: new Float32Array(0), filled: 0 });
  const end = Math.min(first + count, keep);
  if (end > kept.filled) {
    if (end * P > kept.rows.length) { // grow by doubling: a Float32Array is zeroed when made
      const rows = new Float32Array(Math.min(keep, Math.max(end, 2 * kept.rows.length / P)) * P);
      rows.set(kept.rows.subarray(0, kept.filled * P));
      kept.rows = rows;
    }
    kept.rows.set(maskSet(metadata, seed, { first: kept.filled, count: end - kept.filled }), kept.filled * P);
    kept.filled = end;
  }
  const inside = Math.max(0, end - first);
  if (inside === count) return kept.rows.slice(first * P, (first + count) * P);
  const out = new Float32Array(count * P);
  if (inside) out.set(kept.rows.subarray(first * P, end * P));
  out.set(maskSet(metadata, seed, { first: first + inside, count: count - inside }), inside * P);
  return out;
}

/**
 * A portable file's keep masks (docs/FORMAT.md: Portable profile): passes first .. first + count - 1
 * of the mask set `seed` with each layer's threshold applied, a Uint8Array of count *
 * floats_per_pass bytes, 1 where the uniform draw is >= the layer's rate (float32), else 0. Equal
 * to the Python runtime's runtime/portable_masks.py keep_masks, byte for byte.
 */
export function keepMasks(metadata, seed, { first = 0, count } = {}) {
  const uniform = maskSet(metadata, seed, { first, count });
  const layout = maskLayout(metadata);
  const P = layout.floatsPerPass;
  const out = new Uint8Array(uniform.length);
  metadata.stochastic_layers.forEach((layer, i) => {
    const { offset, size } = layout.entries[i];
    const rate = Math.fround(layer.rate);
    for (let row = 0; row < count; row++) {
      for (let j = row * P + offset; j < row * P + offset + size; j++) out[j] = uniform[j] >= rate ? 1 : 0;
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Image -> model input (runtime/image_files.py: _composite, _eight_bit_pixels, _to_model_input,
// _normalize; docs/FORMAT.md: Metadata, preprocessing)
//
// 8-bit steps are Pillow's integer arithmetic, so the result matches the Python runtime's for the
// same pixels (the resize within 1 grey level, in practice exactly).

const COMPOSITE_BITS = 7; // Pillow's AlphaComposite.c
const shiftDiv255 = (a) => ((a >>> 8) + a) >>> 8;

// One RGBA pixel over an opaque grey, as Pillow's Image.alpha_composite computes it.
function compositeOverGrey(value, alpha, grey) {
  if (alpha === 0) return grey;
  const blend = 255 * (255 - alpha);
  const outa255 = alpha * 255 + blend;
  const coef1 = Math.floor((alpha * 255 * 255 * (1 << COMPOSITE_BITS)) / outa255);
  const coef2 = 255 * (1 << COMPOSITE_BITS) - coef1;
  return shiftDiv255(value * coef1 + grey * coef2 + (0x80 << COMPOSITE_BITS)) >>> COMPOSITE_BITS;
}

// Python's round(): halves to even (the background grey is rounded to a whole level).
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// Pillow's Resample.c, 8 bits per channel: Lanczos (a = 3), support widened by the scale when
// shrinking, coefficients in 22-bit fixed point, each pass rounded and clipped to 8 bits.
const PRECISION_BITS = 32 - 8 - 2;

function sinc(x) {
  if (x === 0) return 1;
  x *= Math.PI;
  return Math.sin(x) / x;
}

function lanczos(x) {
  return -3 <= x && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 3 * filterscale;
  const reciprocal = 1 / filterscale; // Pillow multiplies by it: the same rounding
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const weights = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const count = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < count; x++) {
      weights[x] = lanczos((x + xmin - center + 0.5) * reciprocal);
      ww += weights[x];
    }
    for (let x = 0; x < count; x++) {
      const k = ww !== 0 ? weights[x] / ww : weights[x];
      kk[xx * ksize + x] = Math.trunc(k < 0 ? -0.5 + k * 2 ** PRECISION_BITS : 0.5 + k * 2 ** PRECISION_BITS);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = count;
  }
  return { bounds, kk, ksize };
}

const clip8 = (sum) => Math.min(255, Math.max(0, Math.floor(sum / 2 ** PRECISION_BITS)));

// One pass along one axis of an interleaved 8-bit image [height][width][channels].
function resamplePass(pixels, width, height, channels, outWidth, outHeight, horizontal) {
  const { bounds, kk, ksize } = coefficients(horizontal ? width : height, horizontal ? outWidth : outHeight);
  const out = new Uint8Array(outWidth * outHeight * channels);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      const o = horizontal ? x : y;
      const first = bounds[o * 2], count = bounds[o * 2 + 1];
      for (let c = 0; c < channels; c++) {
        let sum = 1 << (PRECISION_BITS - 1);
        for (let i = 0; i < count; i++) {
          const source = horizontal ? (y * width + first + i) : ((first + i) * width + x);
          sum += pixels[source * channels + c] * kk[o * ksize + i];
        }
        out[(y * outWidth + x) * channels + c] = clip8(sum);
      }
    }
  }
  return out;
}

// Image.resize(size, LANCZOS): one pass per axis whose size differs. The order changes the
// rounding between the passes: Pillow 13 runs the vertical pass first when the height shrinks by
// more than twice as many pixels as the width does (measured against Pillow 13.0 on 2,000 sizes;
// Pillow 12 and older always run the horizontal pass first).
function resize(pixels, width, height, channels, outWidth, outHeight) {
  const verticalFirst = outHeight < height && height - outHeight > 2 * (width - outWidth);
  if (verticalFirst) {
    pixels = resamplePass(pixels, width, height, channels, width, outHeight, false);
    height = outHeight;
  }
  if (outWidth !== width) {
    pixels = resamplePass(pixels, width, height, channels, outWidth, height, true);
    width = outWidth;
  }
  if (outHeight !== height) pixels = resamplePass(pixels, width, height, channels, width, outHeight, false);
  return pixels;
}

/**
 * One model input {data: Float32Array, dims: [1, ...]} from 8-bit pixels {data, width, height,
 * channels} (1: grey, 2: grey + alpha, 3: RGB, 4: RGBA, interleaved row by row), as the Python
 * runtime reads an 8-bit image: alpha composited on the background grey, converted to grey (ITU-R
 * 601-2, Pillow's integers) or RGB, Lanczos-resized to the model's size where it differs, then
 * x = (pixel * scale + offset - mean[c]) / std[c] in float32, in the model's channel order.
 */
export function preprocessImage({ data, width, height, channels }, metadata) {
  const pre = metadata.preprocessing && { ...PREPROCESSING_DEFAULTS, ...metadata.preprocessing };
  if (!pre) throw new Error("this model has no image preprocessing in its metadata; feed it preprocessed arrays");
  if (![1, 2, 3, 4].includes(channels)) throw new Error(`images have 1 to 4 channels, got ${channels}`);
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new Error(`bad image size ${width}x${height}`);
  }
  if (!data || data.length !== width * height * channels) {
    throw new Error(`an image of ${width}x${height}x${channels} needs ${width * height * channels} values, got ${data?.length}`);
  }
  const grey = pre.color_mode === "grayscale";
  const pixelCount = width * height;
  const colour = channels >= 3;
  const alpha = channels === 2 || channels === 4;
  // Flatten onto the background (runtime/image_files.py _composite), to RGB.
  let rgb = new Uint8Array(pixelCount * 3);
  const background = roundHalfEven(pre.background);
  let alphaLow = 255, alphaHigh = 0;
  for (let p = 0; p < pixelCount; p++) {
    const base = p * channels;
    const a = alpha ? data[base + channels - 1] : 255;
    for (let c = 0; c < 3; c++) {
      const v = colour ? data[base + c] : data[base];
      rgb[p * 3 + c] = alpha ? compositeOverGrey(v, a, background) : v;
    }
    alphaLow = Math.min(alphaLow, a);
    alphaHigh = Math.max(alphaHigh, a);
  }
  if (alpha && alphaLow !== alphaHigh && rgb.every((v, i) => v === rgb[i % 3])) {
    throw new Error("the picture is only in the alpha (transparency) channel: composited on the model's background "
      + `grey ${pre.background} it is one flat colour; save it with the picture in its colour channels`);
  }
  // Convert to the model's colour mode (Pillow's "L": L = R * 299/1000 + G * 587/1000 + B * 114/1000).
  let pixels = rgb, depth = 3;
  if (grey) {
    pixels = new Uint8Array(pixelCount);
    for (let p = 0; p < pixelCount; p++) {
      pixels[p] = (rgb[p * 3] * 19595 + rgb[p * 3 + 1] * 38470 + rgb[p * 3 + 2] * 7471 + 0x8000) >>> 16;
    }
    depth = 1;
  }
  pixels = resize(pixels, width, height, depth, pre.width, pre.height);
  // x = pixel * scale + offset, channel order, (x - mean[c]) / std[c], all float32 as numpy does.
  const f = Math.fround;
  const scale = f(pre.scale), offset = f(pre.offset);
  const mean = pre.mean.map(f), std = pre.std.map(f);
  const normalizes = mean.some((m) => m !== 0) || std.some((s) => s !== 1);
  const bgr = pre.channel_order === "bgr";
  const x = new Float32Array(pixels.length);
  for (let p = 0; p < pixels.length; p += depth) {
    for (let c = 0; c < depth; c++) {
      let value = f(f(pixels[p + (bgr ? depth - 1 - c : c)] * scale) + offset);
      if (normalizes) value = f(f(value - mean[mean.length === 1 ? 0 : c]) / std[std.length === 1 ? 0 : c]);
      x[p + c] = value;
    }
  }
  const example = metadata.inputs[0].shape.slice(1);
  let shape = grey ? [pre.height, pre.width] : [pre.height, pre.width, 3];
  if (grey && example.length === 3) shape = [...shape, 1]; // the channel axis of NHWC
  if (example.length === 1 && x.length === example[0]) shape = [x.length]; // flat input: row by row
  if (shape.length !== example.length || shape.some((d, i) => d !== example[i])) {
    throw new Error(`the image becomes shape [${shape}] but the model expects [${example}]`);
  }
  return { data: x, dims: [1, ...shape] };
}

// ---------------------------------------------------------------------------------------------
// Running (runtime/session.py, runtime/run_plan.py; docs/FORMAT.md: Inputs)

function checkPasses(passes) {
  if (!Number.isSafeInteger(passes) || passes < 1) throw new Error(`passes must be an integer >= 1, got ${passes}`);
  return passes;
}

/**
 * The feeds for session.run: the float32 input (one {data, dims} from preprocessImage, or a list
 * of them, stacked into one batch), `passes` (int64, default the file's default_passes),
 * `stochastic` (bool, default true; false with passes 1 is the deterministic pass) and, for
 * format 3 files, `masks`: the shared mask set `masks` (a Float32Array of passes x
 * floats_per_pass values, from maskSet) as [passes, floats_per_pass], or without it an empty
 * [0, floats_per_pass] tensor ([0, 0] for a file without a mask layout): independent masks,
 * drawn by the graph's random nodes.
 */
export function feeds(ort, x, { passes, stochastic = true, masks } = {}, metadata) {
  const parts = Array.isArray(x) ? x : [x];
  if (!parts.length) throw new Error("no inputs to feed");
  const example = parts[0].dims.slice(1);
  for (const part of parts) {
    if (part.dims.length !== example.length + 1 || part.dims.slice(1).some((d, i) => d !== example[i])) {
      throw new Error(`inputs of shapes [${parts[0].dims}] and [${part.dims}] cannot form one batch`);
    }
  }
  let data = parts[0].data, batch = parts[0].dims[0];
  if (parts.length > 1) {
    batch = parts.reduce((sum, part) => sum + part.dims[0], 0);
    data = new Float32Array(parts.reduce((sum, part) => sum + part.data.length, 0));
    let at = 0;
    for (const part of parts) {
      data.set(part.data, at);
      at += part.data.length;
    }
  }
  if (metadata.portable) return portableFeeds(ort, data, batch, example, { passes, stochastic, masks }, metadata);
  passes = checkPasses(passes ?? metadata.default_passes);
  const fed = {
    [metadata.inputs[0].name]: new ort.Tensor("float32", Float32Array.from(data), [batch, ...example]),
    passes: new ort.Tensor("int64", BigInt64Array.of(BigInt(passes)), []),
    stochastic: new ort.Tensor("bool", Uint8Array.of(stochastic ? 1 : 0), []),
  };
  if (metadata.format >= MASKS_FROM_FORMAT) {
    fed.masks = masksTensor(ort, masks, passes, metadata);
  } else if (masks !== undefined && masks !== null) {
    throw new Error(`this file is format ${metadata.format}, from before mask sets: export it again to feed one`);
  }
  return fed;
}

// A portable file's feeds: its fixed T and batch, `stochastic`, and its uint8 keep masks (from
// keepMasks) unless baked; it has no `passes` input and no random node for independent masks.
function portableFeeds(ort, data, batch, example, { passes, stochastic, masks }, metadata) {
  const { passes: T, batch: B, baked } = metadata.portable;
  if (passes !== undefined && passes !== T) throw new Error(`a portable file runs its ${T} passes at once; asked for ${passes}`);
  if (B !== null && batch !== B) throw new Error(`a portable file of batch ${B} got a batch of ${batch}`);
  const fed = {
    [metadata.inputs[0].name]: new ort.Tensor("float32", Float32Array.from(data), [batch, ...example]),
    stochastic: new ort.Tensor("bool", Uint8Array.of(stochastic ? 1 : 0), []),
  };
  if (baked) {
    if (masks !== undefined && masks !== null) throw new Error("a baked portable file holds its masks; it takes none");
    return fed;
  }
  const P = maskLayout(metadata).floatsPerPass;
  if (masks === undefined || masks === null) {
    throw new Error("a portable file needs its keep masks (keepMasks(metadata, seed)): it has no random nodes for independent masks");
  }
  if (!(masks instanceof Uint8Array)) throw new Error("a portable file's masks are uint8 keep masks: a Uint8Array from keepMasks");
  if (masks.length !== T * P) throw new Error(`a portable file's masks hold ${T * P} bytes (${T} passes of ${P}), got ${masks.length}`);
  if (masks.some((value) => value > 1)) throw new Error("a portable file's masks hold 0 (drop) or 1 (keep)");
  fed.masks = new ort.Tensor("uint8", masks, [T, P]);
  return fed;
}

// The `masks` feed: the set as [passes, floats_per_pass], or none ([0, floats_per_pass]).
function masksTensor(ort, masks, passes, metadata) {
  const layout = maskLayout(metadata);
  const P = layout?.floatsPerPass ?? 0;
  if (masks === undefined || masks === null) return new ort.Tensor("float32", new Float32Array(0), [0, P]);
  if (!layout) throw new Error("this file takes no mask set (its metadata has no masks layout): use independent masks");
  if (!(masks instanceof Float32Array)) throw new Error("masks must be a Float32Array (from maskSet)");
  if (masks.length !== passes * P) {
    throw new Error(`a mask set for ${passes} passes holds ${passes * P} values (${P} per pass), got ${masks.length}`);
  }
  return new ort.Tensor("float32", masks, [passes, P]);
}

// ---------------------------------------------------------------------------------------------
// When UNCERTAIN (runtime/uncertain_rule.py), categorical heads

export const CATEGORICAL_HEADS = ["softmax", "logits"];
// Single-pass scores: graph outputs of a calibrated file (docs/FORMAT.md: Single-pass scores).
export const SINGLE_PASS_MEASURES = ["feature_distance", "energy", "max_logit"];
const RULE_MEASURES = ["mutual_information", "predictive_entropy", "expected_entropy", "variation_ratio",
  "top_class_variance", "one_minus_confidence", "confidence", "margin", ...SINGLE_PASS_MEASURES];
export const DEFAULT_RULE = "mutual_information > 0.1 or confidence < 0.6";
const CONDITION = /^\s*([a-z_]+)\s*([<>])\s*([-+0-9.eE]+|inf)\s*$/;

// Python's "{:.6g}", so rule lines read as the Python runtime prints them.
function formatG(value) {
  if (value === 0) return Object.is(value, -0) ? "-0" : "0";
  const exponent = Math.floor(Math.log10(Math.abs(Number(value.toPrecision(6)))));
  if (exponent < -4 || exponent >= 6) {
    const [mantissa, exp] = value.toExponential(5).split("e");
    const digits = mantissa.includes(".") ? mantissa.replace(/\.?0+$/, "") : mantissa;
    const power = Number(exp);
    return `${digits}e${power < 0 ? "-" : "+"}${String(Math.abs(power)).padStart(2, "0")}`;
  }
  return String(Number(value.toPrecision(6)));
}

/**
 * A rule from its text ("mutual_information > 0.1 or confidence < 0.6", or "never"): conditions
 * joined by " or " (or commas). Throws for a measure a categorical head does not have.
 */
export function parseRule(text, source = "override") {
  if (typeof text !== "string") throw new Error("an uncertain rule is text");
  const conditions = [];
  if (text.trim().toLowerCase() !== "never") {
    for (const part of text.trim().split(/\s+or\s+|,/)) {
      const match = CONDITION.exec(part);
      if (!match) {
        throw new Error(`uncertain rule ${JSON.stringify(text)}: expected conditions like '${DEFAULT_RULE}', or 'never'`);
      }
      const [, measure, op, bound] = match;
      if (!RULE_MEASURES.includes(measure)) {
        throw new Error(`uncertain rule: a categorical head has no measure '${measure}'; choose from ${RULE_MEASURES.join(", ")}`);
      }
      const value = bound === "inf" ? Infinity : Number(bound);
      if (Number.isNaN(value)) throw new Error(`uncertain rule: '${bound}' is not a number`);
      if (!Number.isFinite(value)) throw new Error(`uncertain rule: ${measure} ${op} ${bound}: the bound must be finite`);
      conditions.push({ measure, op, value });
    }
  }
  const ruleText = conditions.map((c) => `${c.measure} ${c.op} ${formatG(c.value)}`).join(" or ") || "never";
  return { conditions, text: ruleText, source };
}

/** Whether one input's measures (as summarize computes them) meet any condition of the rule. */
export function evaluateRule(rule, measures) {
  return rule.conditions.some(({ measure, op, value }) => {
    const v = measures[measure];
    if (typeof v !== "number") throw new Error(`uncertain rule: no measure '${measure}' to test`);
    return op === ">" ? v > value : v < value;
  });
}

// The rule in effect: an override, else the calibrated file's (docs/FORMAT.md: Calibration), else
// the default rule of thumb.
function ruleFor(metadata, rule) {
  if (rule !== undefined && rule !== null) return typeof rule === "string" ? parseRule(rule, "override") : rule;
  const calibrated = metadata.outputs[0].calibration?.uncertain_rule;
  if (calibrated !== undefined && calibrated !== null) return parseRule(calibrated, "calibrated");
  return parseRule(DEFAULT_RULE, "default");
}

// ---------------------------------------------------------------------------------------------
// Measures (runtime/measures.py, runtime/prediction.py), float64 from the samples [T, B, classes]

const xlogx = (p) => (p > 0 ? p * Math.log(p) : 0);

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

// Monte Carlo standard errors (runtime/measures.py; docs/DESIGN.md: Monte Carlo standard errors):
// a mean over passes gets its terms' sample standard deviation / sqrt(T); a function of the mean
// gets the jackknife over its leave-one-out values. One pass: NaN (null in JSON).
function sampleStandardError(terms) {
  const T = terms.length;
  if (T < 2) return NaN;
  const mean = terms.reduce((sum, v) => sum + v, 0) / T;
  const squares = terms.reduce((sum, v) => sum + (v - mean) ** 2, 0);
  return Math.sqrt(squares / (T - 1) / T);
}

function jackknifeStandardError(leftOut) {
  const T = leftOut.length;
  if (T < 2) return NaN;
  const mean = leftOut.reduce((sum, v) => sum + v, 0) / T;
  return Math.sqrt(((T - 1) / T) * leftOut.reduce((sum, v) => sum + (v - mean) ** 2, 0));
}

const entropyOf = (p) => -p.reduce((sum, v) => sum + xlogx(v), 0);

// names: the standard errors to compute (a settle check's, errorsNeeded); all of them by default.
function standardErrorsOf(passes, mean, variance, index, names) {
  const T = passes.length, C = mean.length;
  const sums = mean.map((_, c) => passes.reduce((sum, pass) => sum + pass[c], 0));
  const entropies = passes.map(entropyOf);
  const entropySum = entropies.reduce((sum, h) => sum + h, 0);
  // Leave-one-out means and mean entropies (T >= 2 where they are used).
  const leftOut = passes.map((pass) => pass.map((v, c) => (sums[c] - v) / (T - 1)));
  const leftOutEntropy = entropies.map((h) => (entropySum - h) / (T - 1));
  const topTwo = (p) => {
    const sorted = [...p].sort((a, b2) => b2 - a);
    return C === 1 ? [sorted[0], 0] : [sorted[0], sorted[1]];
  };
  const column = (c) => passes.map((pass) => pass[c]);
  const votes = passes.map(argmax);
  const counts = new Array(C).fill(0);
  for (const v of votes) counts[v] += 1;
  const modal = argmax(counts);
  // std of the top class: leaving pass t out removes T / (T - 1) d_t^2 from the sum of squares.
  const deviations = column(index).map((v) => v - mean[index]);
  const squares = deviations.reduce((sum, d) => sum + d * d, 0);
  const errors = {
    mean_se: () => mean.map((_, c) => sampleStandardError(column(c))),
    variance_se: () => mean.map((m, c) => sampleStandardError(column(c).map((v) => (v - m) ** 2))),
    std_se: () => jackknifeStandardError(deviations.map((d) => Math.sqrt(Math.max(squares - (T / (T - 1)) * d * d, 0) / (T - 1)))),
    confidence_se: () => jackknifeStandardError(leftOut.map((p) => topTwo(p)[0])),
    margin_se: () => jackknifeStandardError(leftOut.map((p) => (C === 1 ? p[0] : topTwo(p)[0] - topTwo(p)[1]))),
    predictive_entropy_se: () => jackknifeStandardError(leftOut.map(entropyOf)),
    expected_entropy_se: () => sampleStandardError(entropies),
    mutual_information_se: () => jackknifeStandardError(leftOut.map((p, t) => entropyOf(p) - leftOutEntropy[t])),
    variation_ratio_se: () => sampleStandardError(votes.map((v) => (v === modal ? 1 : 0))),
  };
  return Object.fromEntries((names ?? Object.keys(errors)).map((name) => [name, errors[name]()]));
}

function measuresOf(samples, T, B, C, b, errorNames) {
  const at = (t, c) => samples[(t * B + b) * C + c];
  const mean = new Array(C).fill(0), variance = new Array(C).fill(0);
  for (let c = 0; c < C; c++) {
    let sum = 0;
    for (let t = 0; t < T; t++) sum += at(t, c);
    mean[c] = sum / T;
    let squares = 0; // two-pass: the mean is subtracted before squaring
    for (let t = 0; t < T; t++) squares += (at(t, c) - mean[c]) ** 2;
    variance[c] = squares / T;
  }
  const index = argmax(mean);
  const sorted = [...mean].sort((a, b2) => b2 - a);
  let expected = 0;
  const votes = new Array(C).fill(0);
  for (let t = 0; t < T; t++) {
    const pass = Array.from({ length: C }, (_, c) => at(t, c));
    expected -= pass.reduce((sum, p) => sum + xlogx(p), 0);
    votes[argmax(pass)] += 1;
  }
  expected /= T;
  const predictive = -mean.reduce((sum, p) => sum + xlogx(p), 0);
  const f = Math.fround; // the Python runtime keeps its measures and mean as float32
  const meanF = mean.map(f);
  return {
    index, mean, variance,
    confidence: sorted[0],
    margin: C === 1 ? mean[0] : sorted[0] - sorted[1],
    std: Math.sqrt(Math.max(variance[index], 0)),
    predictive_entropy: predictive,
    expected_entropy: expected,
    mutual_information: Math.max(predictive - expected, 0),
    variation_ratio: 1 - Math.max(...votes) / T,
    top_class_variance: f(variance[argmax(meanF)]),
    one_minus_confidence: 1 - Math.max(...meanF),
    standard_errors: standardErrorsOf(Array.from({ length: T }, (_, t) => Array.from({ length: C }, (_, c) => at(t, c))),
      mean, variance, index, errorNames),
  };
}

/** Input `index`'s rows of samples {data, dims: [T, batch, classes]}: [T][classes], plain numbers. */
export function passesOf(samples, index) {
  const [T, B, C] = samples.dims.map(Number);
  return Array.from({ length: T }, (_, t) => Array.from(samples.data.subarray((t * B + index) * C, (t * B + index + 1) * C)));
}

/**
 * The classes (indices) in one input's conformal set, from a calibrated file's conformal entry
 * (docs/FORMAT.md: Calibration), decided in float32 like the graph's prediction_set and the Python
 * runtime (runtime/conformal_sets.py): lac and mondrian keep mean >= 1 - q (one q, or one per class);
 * aps and raps keep the classes whose tail mass (ranked below them, summed from the least likely up)
 * minus the rank penalty is >= 1 - score_quantile.
 */
export function conformalSet(mean, conformal) {
  const f = Math.fround;
  const p = mean.map(f);
  const method = conformal.method ?? "lac";
  if (method === "lac" || method === "mondrian") {
    const q = method === "lac" ? p.map(() => conformal.quantile) : conformal.class_quantiles;
    return p.flatMap((v, c) => (v >= f(1 - f(q[c])) ? [c] : []));
  }
  if (method !== "aps" && method !== "raps") {
    throw new Error(`conformal method ${method} is not one this library reads (lac, mondrian, aps, raps)`);
  }
  const order = p.map((_, c) => c).sort((a, b) => p[b] - p[a] || a - b);
  const bound = f(1 - conformal.score_quantile);
  const penalty = f(conformal.penalty ?? 0);
  const kReg = conformal.k_reg ?? 0;
  const tails = new Array(order.length);
  let tail = 0;
  for (let r = order.length - 1; r >= 0; r--) {
    tails[r] = tail;
    tail = f(tail + p[order[r]]);
  }
  const kept = order.filter((_, r) => f(tails[r] - f(penalty * Math.max(r + 1 - kReg, 0))) >= bound);
  return kept.sort((a, b) => a - b);
}


// The values a rule tests, as the Python runtime stores them: float32, except one_minus_confidence,
// which it computes in float64 from the float32 mean. One place for summarize and predict "auto".
function testedOf(m) {
  return Object.fromEntries(RULE_MEASURES.filter((name) => name in m)
    .map((name) => [name, name === "one_minus_confidence" ? m[name] : Math.fround(m[name])]));
}

/**
 * A calibrated file's single-pass scores (those of SINGLE_PASS_MEASURES its graph has) from one run
 * of the plain network (passes 1, stochastic false), as the Python runtime reads them and as the
 * file's rule was fitted: outputs to add to a Monte Carlo run's before summarize, whose own energy
 * and max_logit are averages over its passes. {} for other files and for portable ones.
 */
export async function singlePassOutputs(ort, session, x, metadata) {
  const output = metadata.outputs[0];
  const names = (output.calibration?.graph_outputs ?? []).filter((name) => SINGLE_PASS_MEASURES.includes(name))
    .map((name) => `${output.prefix}${name}`);
  if (!names.length || metadata.portable) return {};
  return session.run(feeds(ort, x, { passes: 1, stochastic: false }, metadata), names);
}

/**
 * Per input of the batch: {label, index, confidence, mean, variance, std (of the top class),
 * predictive_entropy, expected_entropy, mutual_information, margin, variation_ratio, uncertain,
 * their Monte Carlo standard errors (mean_se and variance_se per class, std_se of the top class,
 * confidence_se, margin_se, predictive_entropy_se, expected_entropy_se, mutual_information_se,
 * variation_ratio_se; NaN with one pass), prediction_set (calibrated files with conformal sets),
 * feature_distance, energy, max_logit (calibrated files, when `outputs` holds them: energy and
 * max_logit are averaged over the run's passes, the plain network's in a run with stochastic
 * false), ruleText, ruleSource}, from the outputs of
 * session.run (its `samples`). The array also carries `ruleText` and `ruleSource` ("override",
 * "calibrated" or "default"). `rule`: text or a parseRule result overriding the file's rule.
 */
export function summarize(outputs, metadata, { rule } = {}) {
  const output = metadata.outputs[0];
  if (!CATEGORICAL_HEADS.includes(output.head)) {
    throw new Error(`this example handles softmax/logits heads; this model's head is ${output.head}`);
  }
  const samples = outputs[`${output.prefix}samples`];
  if (!samples) throw new Error(`the outputs hold no '${output.prefix}samples'; run the session for it`);
  const [T, B, C] = samples.dims.map(Number);
  const effective = ruleFor(metadata, rule);
  const conformal = output.calibration?.conformal;
  const labelOf = (c) => (output.labels ? String(output.labels[c]) : String(c));
  const results = [];
  for (let b = 0; b < B; b++) {
    const m = measuresOf(samples.data, T, B, C, b);
    for (const name of SINGLE_PASS_MEASURES) {
      const found = outputs[`${output.prefix}${name}`];
      if (found) m[name] = found.data[b];
    }
    const tested = testedOf(m);
    const result = {
      label: labelOf(m.index),
      index: m.index,
      confidence: m.confidence,
      mean: m.mean,
      variance: m.variance,
      std: m.std,
      predictive_entropy: m.predictive_entropy,
      expected_entropy: m.expected_entropy,
      mutual_information: m.mutual_information,
      margin: m.margin,
      variation_ratio: m.variation_ratio,
      ...Object.fromEntries(SINGLE_PASS_MEASURES.filter((name) => name in m).map((name) => [name, m[name]])),
      ...m.standard_errors,
      uncertain: evaluateRule(effective, tested),
      ruleText: effective.text,
      ruleSource: effective.source,
    };
    if (conformal) result.prediction_set = conformalSet(m.mean, conformal).map(labelOf);
    results.push(result);
  }
  results.ruleText = effective.text;
  results.ruleSource = effective.source;
  return results;
}

// ---------------------------------------------------------------------------------------------
// Adaptive passes (runtime/adaptive_passes.py; docs/DESIGN.md: Adaptive passes)
//
// passes "auto" runs rounds of the shared mask set (passes [done, next) of the one set): first
// minPasses, then x GROWTH up to maxPasses. After each round an input leaves once its label and
// UNCERTAIN verdict are settled: a value's distance to the bound that would change the outcome is
// more than z of its standard errors, z = LABEL_Z or VERDICT_Z x sqrt(1 - passes / maxPasses), plus
// how far a dissenting pass (all on the runner-up class) would move it toward that bound: of weight
// UNSEEN_DISSENT for the label, and for the verdict that plus the dissent seen so far (the passes'
// probability off the top class, summed), up to SEEN_DISSENT_CAP. The same rule and constants as
// the Python runtime, read off the same float32 values, so an input stops after the same passes in
// both for a mask seed.

export const VERDICT_Z = 2.5;
export const LABEL_Z = 2.0;
export const UNSEEN_DISSENT = 0.25;
export const SEEN_DISSENT_CAP = 1.0;
export const DEFAULT_MIN_PASSES = 10;
export const GROWTH = 1.1;

// A run that costs more for its fixed part (the layers before the first dropout, the call itself)
// than for its passes also computes later rounds' passes (RoundCost in Python): measured once per
// session, in passes, the best of PROBE_REPEATS runs of one input at 1 and PROBE_PASSES passes
// (maxPasses if fewer).
// Decisions stay at the schedule's points, so passes and results do not change.
export const PROBE_PASSES = 16;
export const PROBE_REPEATS = 3;
const fixedCosts = new WeakMap();

async function fixedCostOf(ort, session, row, metadata, maxPasses) {
  const probe = Math.min(PROBE_PASSES, maxPasses);
  if (probe < 2) return 0; // nothing to look ahead to
  if (!fixedCosts.has(session)) {
    const best = async (count) => {
      const inputs = feeds(ort, [row], { passes: count, masks: maskSet(metadata, 0, { count }) }, metadata);
      let found = Infinity;
      for (let i = 0; i < PROBE_REPEATS; i++) {
        const start = performance.now();
        await session.run(inputs);
        found = Math.min(found, performance.now() - start);
      }
      return found;
    };
    const one = await best(1), perPass = (await best(probe) - one) / (probe - 1);
    fixedCosts.set(session, perPass <= 0 ? Infinity : Math.max(one - perPass, 0) / perPass);
  }
  return fixedCosts.get(session);
}

/** The schedule point a run from pass `computed` reaches: counts[i] at least, further while the
 * run's fixed part costs more than the passes it adds (fixedCost in passes; 0: one run a round). */
export function lookAhead(counts, i, computed, fixedCost) {
  if (!fixedCost) return counts[i];
  return counts.slice(i).find((count) => count - computed >= fixedCost) ?? counts[counts.length - 1];
}

/** The pass counts after each round: minPasses, x GROWTH (at least one more), ending at maxPasses. */
export function schedule(minPasses, maxPasses) {
  const counts = [minPasses];
  while (counts[counts.length - 1] < maxPasses) {
    const last = counts[counts.length - 1];
    counts.push(Math.min(Math.max(Math.floor(GROWTH * last), last + 1), maxPasses));
  }
  return counts;
}

// Whether `value` stays on its side of `bound`: more than z x se plus the dissented value's move toward it.
function sure(value, bound, se, dissented, z) {
  const toward = Math.max((dissented - value) * Math.sign(bound - value), 0);
  return Math.abs(value - bound) > z * se + toward;
}

// One input's rule measures and margin with the dissenting pass of `weight`, from its float32 mean,
// variance, expected entropy and variation ratio (as the Python runtime stores them).
function dissentedMeasures(m, T, weight) {
  const f = Math.fround, C = m.mean.length;
  const meanF = m.mean.map(f);
  const order = meanF.map((_, c) => c).sort((a, b) => meanF[b] - meanF[a] || a - b);
  const runnerUp = order[Math.min(1, C - 1)];
  const kept = T / (T + weight);
  const pass = meanF.map((_, c) => (c === runnerUp ? 1 : 0));
  const mean = meanF.map((p, c) => kept * p + (1 - kept) * pass[c]);
  const variance = meanF.map((p, c) => Math.max(kept * (f(m.variance[c]) + p * p) + (1 - kept) * pass[c] ** 2 - mean[c] ** 2, 0));
  const sorted = [...mean].sort((a, b) => b - a);
  const entropy = -mean.reduce((sum, p) => sum + xlogx(p), 0);
  const expected = kept * f(m.expected_entropy); // the dissenting pass is one-hot: entropy 0
  return {
    confidence: sorted[0], one_minus_confidence: 1 - sorted[0], margin: C === 1 ? mean[0] : sorted[0] - sorted[1],
    predictive_entropy: entropy, expected_entropy: expected, mutual_information: Math.max(entropy - expected, 0),
    variation_ratio: 1 - kept * (1 - f(m.variation_ratio)), top_class_variance: variance[argmax(meanF)],
  };
}

// The standard error a rule's measure is judged by, where it is not the measure's own
// (runtime/adaptive_passes.py ERROR_OF).
const ERROR_OF = { one_minus_confidence: "confidence", top_class_variance: "variance" };

// The standard errors settled reads (runtime/adaptive_passes.py errors_needed): the margin's and
// the rule's measures'; a settle check computes these alone.
export function errorsNeeded(rule) {
  const names = new Set(["margin_se"]);
  for (const { measure } of rule.conditions) {
    if (!SINGLE_PASS_MEASURES.includes(measure)) names.add(`${ERROR_OF[measure] ?? measure}_se`);
  }
  return [...names];
}

// The standard error of a measure a rule may name, as runtime/adaptive_passes.py measure_error reads it.
function measureError(m, name) {
  const found = m.standard_errors[`${ERROR_OF[name] ?? name}_se`];
  return name === "top_class_variance" ? found[argmax(m.mean.map(Math.fround))] : found;
}

/**
 * Whether one input's label and verdict are settled after T of at most maxPasses passes: `m` from
 * measuresOf, `tested` the rule's values as summarize tests them. A condition on a single-pass
 * measure does not change with passes, so it cannot unsettle the verdict.
 */
function settled(m, tested, rule, T, maxPasses) {
  const f = Math.fround;
  const scale = Math.sqrt(Math.max(1 - T / maxPasses, 0));
  const labelDissent = dissentedMeasures(m, T, UNSEEN_DISSENT);
  if (!sure(f(m.margin), 0, f(m.standard_errors.margin_se), labelDissent.margin, LABEL_Z * scale)) return false;
  const seen = T * (1 - Math.max(...m.mean.map(f)));
  const dissent = dissentedMeasures(m, T, UNSEEN_DISSENT + Math.min(seen, SEEN_DISSENT_CAP));
  const z = VERDICT_Z * scale;
  let surelyMet = false, surelyNot = true;
  for (const { measure, op, value } of rule.conditions) {
    if (SINGLE_PASS_MEASURES.includes(measure)) continue;
    const v = tested[measure];
    const met = op === ">" ? v > value : v < value;
    const certain = sure(v, value, f(measureError(m, measure)), dissent[measure], z);
    surelyMet ||= met && certain;
    surelyNot &&= !met && certain;
  }
  return surelyMet || surelyNot;
}

// The input's parts one row each: a list of {data, dims} (from preprocessImage, or a batch).
function rowsOf(x) {
  return (Array.isArray(x) ? x : [x]).flatMap((part) => {
    const size = part.dims.slice(1).reduce((product, d) => product * d, 1);
    return Array.from({ length: part.dims[0] }, (_, b) => ({ data: part.data.subarray(b * size, (b + 1) * size), dims: [1, ...part.dims.slice(1)] }));
  });
}

/**
 * Run a categorical mcdrop file with shared masks and summarize: passes (a count, default the
 * file's default_passes) or "auto" with maxPasses (default the file's default_passes) and minPasses
 * (default DEFAULT_MIN_PASSES, at most maxPasses); maskSeed (default 0); rule as summarize takes it;
 * fixedCost: what a run's fixed part costs in passes (default: measured once per session; above).
 * Each result is summarize's plus `passes`: the passes its input ran. With "auto", each input runs
 * rounds until settled (above). A calibrated file's single-pass scores come from one plain run
 * (singlePassOutputs), as in Python.
 * Deterministic for a mask seed, whatever the batch, and equal to the Python runtime's
 * predict(passes="auto") in each input's passes.
 */
export async function predict(ort, session, x, metadata, { passes, maxPasses, minPasses, maskSeed = 0, rule, fixedCost } = {}) {
  if (!maskLayout(metadata) || metadata.portable) throw new Error("predict runs a shared mask set: this file takes none");
  if (passes !== "auto") {
    if (maxPasses !== undefined || minPasses !== undefined || fixedCost !== undefined) {
      throw new Error("maxPasses, minPasses and fixedCost are for passes \"auto\"");
    }
    const count = checkPasses(passes ?? metadata.default_passes);
    const masks = sessionMaskSet(session, metadata, maskSeed, { count });
    const outputs = { ...await session.run(feeds(ort, x, { passes: count, masks }, metadata)),
      ...await singlePassOutputs(ort, session, x, metadata) };
    const results = summarize(outputs, metadata, { rule });
    for (const result of results) result.passes = count;
    return results;
  }
  const high = maxPasses === undefined ? metadata.default_passes : maxPasses;
  if (!Number.isSafeInteger(high) || high < 1) throw new Error(`maxPasses must be an integer >= 1, got ${maxPasses}`);
  const low = minPasses === undefined ? Math.min(DEFAULT_MIN_PASSES, high) : minPasses;
  if (!Number.isSafeInteger(low) || low < 1) throw new Error(`minPasses must be an integer >= 1, got ${minPasses}`);
  if (low > high) throw new Error(`minPasses ${low} is more than maxPasses ${high}`);
  if (fixedCost !== undefined && !(fixedCost >= 0)) throw new Error(`fixedCost must be a number >= 0, got ${fixedCost}`);
  const output = metadata.outputs[0], effective = ruleFor(metadata, rule);
  const rows = rowsOf(x);
  const passRows = rows.map(() => []); // per input: its passes' probabilities, one Float32Array each
  const plain = await singlePassOutputs(ort, session, x, metadata);
  const singlePass = rows.map((_, b) => Object.fromEntries(Object.entries(plain).map(
    ([name, found]) => [name.slice(output.prefix.length), found.data[b]])));
  const counts = schedule(low, high);
  const needed = errorsNeeded(effective);
  const cost = fixedCost ?? await fixedCostOf(ort, session, rows[0], metadata, high);
  const taken = rows.map(() => 0); // per input: the passes it counts (a run may have computed more)
  let active = rows.map((_, b) => b), computed = 0;
  const samplesOf = (b) => { // input b's first taken[b] passes as a [T, 1, C] samples output
    const C = passRows[b][0].length, T = taken[b];
    const data = new Float32Array(T * C);
    passRows[b].slice(0, T).forEach((row, t) => data.set(row, t * C));
    return { data, dims: [T, 1, C] };
  };
  const summaryOf = (b) => {
    const outputs = { [`${output.prefix}samples`]: samplesOf(b) };
    for (const [name, value] of Object.entries(singlePass[b])) outputs[`${output.prefix}${name}`] = { data: [value] };
    return summarize(outputs, metadata, { rule: effective })[0];
  };
  for (const [round, count] of counts.entries()) {
    if (count > computed) {
      const target = lookAhead(counts, round, computed, cost);
      const masks = sessionMaskSet(session, metadata, maskSeed, { first: computed, count: target - computed });
      const outputs = await session.run(feeds(ort, active.map((b) => rows[b]), { passes: target - computed, masks }, metadata));
      const samples = outputs[`${output.prefix}samples`];
      const [T, B, C] = samples.dims.map(Number);
      active.forEach((b, i) => {
        for (let t = 0; t < T; t++) passRows[b].push(samples.data.slice((t * B + i) * C, (t * B + i + 1) * C));
      });
      computed = target;
    }
    for (const b of active) taken[b] = count;
    if (count === high) break;
    active = active.filter((b) => {
      const { data, dims: [T, , C] } = samplesOf(b);
      const m = measuresOf(data, T, 1, C, 0, needed);
      const tested = testedOf(m);
      return !settled(m, tested, effective, T, high);
    });
    if (!active.length) break;
  }
  const results = rows.map((_, b) => ({ ...summaryOf(b), passes: taken[b] }));
  results.ruleText = effective.text;
  results.ruleSource = effective.source;
  return results;
}
