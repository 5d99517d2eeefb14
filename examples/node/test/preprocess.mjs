// Test hook for tests/test_node_example.py: what examples/lib/mcdrop.mjs makes of images.
//   node preprocess.mjs MODEL.onnx IMAGE.png...   the model inputs of PNG or JPEG files, decoded as infer.js does
//   node preprocess.mjs < requests.json           {metadata, images: [{data: base64 8-bit pixels, width,
//                                                  height, channels}]}, or a list of such: the inputs of
//                                                  raw pixels
// Prints {inputs: [{dims, data} or {error}]}.
import { readFileSync } from "node:fs";

import { preprocessImage, readModelFile } from "../../lib/mcdrop.mjs";
import { decodeImage } from "../images.mjs";

function each(images, metadata) {
  return images.map((image) => {
    try {
      const x = preprocessImage(image(), metadata);
      return { dims: x.dims, data: Array.from(x.data) };
    } catch (err) {
      return { error: err.message };
    }
  });
}

let inputs;
const [model, ...paths] = process.argv.slice(2);
if (model) {
  const { metadata } = readModelFile(new Uint8Array(readFileSync(model)));
  inputs = each(paths.map((path) => () => decodeImage(new Uint8Array(readFileSync(path)), path)), metadata);
} else {
  let text = "";
  for await (const chunk of process.stdin) text += chunk;
  // One request, or a list of them (each with its own metadata): their inputs in order.
  const requests = [JSON.parse(text)].flat();
  inputs = requests.flatMap(({ metadata, images }) => each(
    images.map((image) => () => ({ ...image, data: new Uint8Array(Buffer.from(image.data, "base64")) })), metadata));
}
process.stdout.write(JSON.stringify({ inputs }));
