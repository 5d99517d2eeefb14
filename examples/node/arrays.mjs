// Already preprocessed inputs for the Node example, as `python cli.py infer` takes them: an .npy
// file (numpy's format, docs: numpy.lib.format) or a JSON file of nested lists, each a batch
// (axis 0). Both become {data: Float32Array, dims} for feeds; values are converted to float32 as
// numpy's astype(np.float32) does (round to nearest).

const firstLine = (text) => String(text).split("\n").find((line) => line.trim()) ?? String(text);

const NPY_MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"
// numpy's own bound on an .npy header (read_array_header_*'s max_header_size default).
const NPY_HEADER_BYTES = 10000;
// DataView readers by numpy kind and item size; "b" (bool), complex and object arrays are refused.
const READERS = {
  f2: null, f4: "getFloat32", f8: "getFloat64",
  i1: "getInt8", i2: "getInt16", i4: "getInt32", i8: "getBigInt64",
  u1: "getUint8", u2: "getUint16", u4: "getUint32", u8: "getBigUint64",
};

// numpy's own bound on the number of axes (NPY_MAXDIMS): deeper JSON nesting is refused early.
const MAX_AXES = 64;

class ArrayFileError extends Error {}

const product = (dims) => dims.reduce((a, b) => a * b, 1);

// The header dict numpy writes: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 784), }
function npyHeader(text) {
  const descr = /'descr'\s*:\s*'([<>|=])([a-zA-Z])(\d+)'/.exec(text);
  const order = /'fortran_order'\s*:\s*(True|False)/.exec(text);
  const shape = /'shape'\s*:\s*\(([\d\s,]*)\)/.exec(text);
  if (!descr || !order || !shape) throw new ArrayFileError(`cannot read array (a garbled .npy header: ${JSON.stringify(text.trim())})`);
  const [, byteOrder, kind, size] = descr;
  const reader = READERS[`${kind}${size}`];
  if (!reader) {
    throw new ArrayFileError(`cannot read array of dtype ${byteOrder}${kind}${size}: inputs must be real numbers `
      + "(float32, float64 or integers)");
  }
  const dims = shape[1].split(",").map((d) => d.trim()).filter(Boolean).map(Number);
  if (dims.some((d) => !Number.isSafeInteger(d))) throw new ArrayFileError(`cannot read array (shape ${shape[0]})`);
  return { reader, itemSize: Number(size), littleEndian: byteOrder !== ">", fortran: order[1] === "True", dims };
}

/** The array of an .npy file's bytes as {data: Float32Array, dims}. */
export function readNpy(bytes) {
  if (bytes.length < 10 || !NPY_MAGIC.every((b, i) => bytes[i] === b)) {
    throw new ArrayFileError("cannot read array (not an .npy file: no \\x93NUMPY magic)");
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  if (![1, 2, 3].includes(major)) throw new ArrayFileError(`.npy format version ${major}.${bytes[7]} is not supported`);
  const wide = major >= 2;
  const headerLength = wide ? (bytes.length >= 12 ? view.getUint32(8, true) : Infinity) : view.getUint16(8, true);
  const start = (wide ? 12 : 10) + headerLength;
  if (headerLength > NPY_HEADER_BYTES || start > bytes.length) {
    throw new ArrayFileError("cannot read array (its .npy header is truncated or too long)");
  }
  const header = npyHeader(new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(bytes.subarray(wide ? 12 : 10, start)));
  const count = product(header.dims);
  const needed = count * header.itemSize;
  if (needed > bytes.length - start) {
    throw new ArrayFileError(`cannot read array (truncated: its header declares ${needed} bytes of data, `
      + `the file holds ${bytes.length - start})`);
  }
  const data = new Float32Array(count);
  const read = view[header.reader].bind(view);
  for (let i = 0; i < count; i++) data[i] = Number(read(start + i * header.itemSize, header.littleEndian));
  return { data: header.fortran ? toRowMajor(data, header.dims) : data, dims: header.dims };
}

// Fortran (column-major) order -> C (row-major) order, same dims.
function toRowMajor(data, dims) {
  const out = new Float32Array(data.length);
  const index = new Array(dims.length).fill(0);
  for (let c = 0; c < data.length; c++) {
    let f = 0;
    for (let k = dims.length - 1; k >= 0; k--) f = f * dims[k] + index[k];
    out[c] = data[f];
    for (let k = dims.length - 1; k >= 0 && ++index[k] === dims[k]; k--) index[k] = 0;
  }
  return out;
}

/** A JSON document of nested lists of numbers (all rows of one length) as {data: Float32Array, dims}. */
export function readJsonArray(text) {
  let document;
  try {
    document = JSON.parse(text);
  } catch (err) {
    throw new ArrayFileError(`cannot read array (not JSON: ${firstLine(err.message)})`);
  }
  if (!Array.isArray(document)) throw new ArrayFileError("cannot read array (JSON inputs are nested lists of numbers, a batch)");
  const dims = [];
  for (let level = document; Array.isArray(level); level = level[0]) {
    dims.push(level.length);
    if (dims.length > MAX_AXES) throw new ArrayFileError(`cannot read array (lists nested more than ${MAX_AXES} deep)`);
  }
  const data = new Float32Array(product(dims));
  let at = 0;
  const walk = (value, depth, where) => {
    if (depth === dims.length) {
      if (typeof value !== "number") throw new ArrayFileError(`cannot read array (${where} is ${JSON.stringify(value)}, not a number)`);
      data[at++] = value;
      return;
    }
    if (!Array.isArray(value) || value.length !== dims[depth]) {
      throw new ArrayFileError(`cannot read array (${where || "the list"} is not a list of ${dims[depth]} like its first sibling: `
        + "rows must all have one length)");
    }
    value.forEach((item, i) => walk(item, depth + 1, `${where}[${i}]`));
  };
  walk(document, 0, "");
  return { data, dims };
}

/**
 * An array file (`.npy` or `.json`, by name) as a batch for the model's first input, checked as
 * the Python runtime checks it (runtime/format/metadata.py shape_problem): {data, dims, names}.
 */
export function readArrayFile(bytes, path, metadata) {
  let array;
  try {
    array = path.toLowerCase().endsWith(".npy") ? readNpy(bytes) : readJsonArray(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    if (err instanceof ArrayFileError) throw new Error(`${path}: ${err.message}`);
    if (err instanceof TypeError) throw new Error(`${path}: cannot read array (not UTF-8 text)`);
    throw err;
  }
  const { data, dims } = array;
  if (dims.length === 0) throw new Error(`${path}: holds a single number, not a batch`);
  if (dims[0] === 0) throw new Error(`${path}: holds no examples (its batch axis is 0 long)`);
  const expected = metadata.inputs[0].shape.slice(1);
  const wanted = `[batch, ${expected.map((d) => (Number.isInteger(d) ? d : "?")).join(", ")}]`;
  const same = (a, b) => a.length === b.length && a.every((d, i) => d === b[i]);
  if (same(dims, expected)) {
    throw new Error(`${path}: holds shape [${dims.join(", ")}], one example without the batch axis; the model expects ${wanted}: add one`);
  }
  if (dims.length !== expected.length + 1 || expected.some((d, i) => Number.isInteger(d) && d !== dims[i + 1])) {
    throw new Error(`${path}: holds shape [${dims.join(", ")}], the model expects ${wanted}`);
  }
  const bad = data.reduce((n, v) => n + (Number.isFinite(v) ? 0 : 1), 0);
  if (bad) throw new Error(`${path}: holds ${bad} NaN or infinite values`);
  return { data, dims, names: Array.from({ length: dims[0] }, (_, i) => `${path}[${i}]`) };
}
