// PNG file bytes -> 8-bit RGBA pixels for preprocessImage (Node only: pngjs works on Buffers).
import pngjs from "pngjs";

const firstLine = (text) => String(text).split("\n").find((line) => line.trim()) ?? String(text);

/**
 * {data, width, height, channels: 4}: pngjs expands grey, grey + alpha, palette and colour-key
 * transparency to 8-bit RGBA, and rounds 16-bit samples to 8 bits (the Python runtime keeps
 * 16-bit images in float: the two differ by less than one grey level there).
 */
export function decodePng(bytes, path) {
  try {
    const png = pngjs.PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    const data = new Uint8Array(png.data.buffer, png.data.byteOffset, png.data.length);
    return { data, width: png.width, height: png.height, channels: 4 };
  } catch (err) {
    throw new Error(`${path}: cannot read image (not a PNG file: ${firstLine(err.message)})`);
  }
}
