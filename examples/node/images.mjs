// Image file bytes -> 8-bit RGBA pixels for preprocessImage (Node only): PNG through pngjs, JPEG
// through jpeg-js, told apart by their first bytes (as Pillow does), not by the file name.
import jpeg from "jpeg-js";

import { decodePng } from "./png.mjs";

const firstLine = (text) => String(text).split("\n").find((line) => line.trim()) ?? String(text);

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const JPEG_SIGNATURE = [0xff, 0xd8, 0xff];
// The Python runtime's default image_pixels limit (runtime/limits.py), in jpeg-js's megapixels.
const MAX_MEGAPIXELS = 40;

const startsWith = (bytes, signature) => signature.every((b, i) => bytes[i] === b);

/**
 * {data, width, height, channels: 4} of a baseline or progressive JPEG. jpeg-js converts grey,
 * YCbCr and Adobe CMYK/YCCK to RGB; its IDCT and chroma upsampling are not libjpeg's, so pixels
 * can differ from Pillow's by a few levels (tests/test_node_example.py measures it). Like the
 * Python runtime, the EXIF orientation is not applied.
 */
export function decodeJpeg(bytes, path) {
  try {
    const image = jpeg.decode(bytes, {
      useTArray: true, formatAsRGBA: true, tolerantDecoding: false, maxResolutionInMP: MAX_MEGAPIXELS,
    });
    return { data: image.data, width: image.width, height: image.height, channels: 4 };
  } catch (err) {
    throw new Error(`${path}: cannot read image (broken JPEG file: ${firstLine(err?.message ?? err)})`);
  }
}

/** PNG or JPEG bytes -> pixels; anything else is refused in one line. */
export function decodeImage(bytes, path) {
  if (startsWith(bytes, PNG_SIGNATURE)) return decodePng(bytes, path);
  if (startsWith(bytes, JPEG_SIGNATURE)) return decodeJpeg(bytes, path);
  throw new Error(`${path}: cannot read image (not a PNG or JPEG file)`);
}
