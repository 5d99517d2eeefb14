// Test hook for tests/test_node_example.py: what withFreshSeeds changes in a model file.
//   node seeds.mjs MODEL.onnx SEED [MULTIPLIER]
// Prints {length, rewrittenLength, randomNodes, changed: [offsets of the bytes that differ],
// seeds: [the new seed of each random node], again: [the seeds of a second call with SEED]}.
import { readFileSync } from "node:fs";

import { MINSTD, readModelFile, withFreshSeeds } from "../../lib/mcdrop.mjs";

const [model, seedText, multiplierText] = process.argv.slice(2);
const bytes = new Uint8Array(readFileSync(model));
const options = { seed: Number(seedText), multiplier: Number(multiplierText ?? MINSTD.node) };
const { randomNodes } = readModelFile(bytes);
const rewritten = withFreshSeeds(bytes, options);
const changed = [];
for (let i = 0; i < bytes.length; i++) if (bytes[i] !== rewritten[i]) changed.push(i);
const seedsOf = (file) => readModelFile(file).randomNodes.map((node) => node.seed);
process.stdout.write(JSON.stringify({
  length: bytes.length, rewrittenLength: rewritten.length, randomNodes, changed,
  seeds: seedsOf(rewritten), again: seedsOf(withFreshSeeds(bytes, options)),
}));
