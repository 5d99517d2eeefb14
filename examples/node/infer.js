#!/usr/bin/env node
// Monte Carlo dropout in Node: one mcdrop ONNX file, PNG or JPEG images (or preprocessed .npy /
// JSON arrays) in, each one's label with its uncertainty out, like `python cli.py infer` (README.md
// in this folder).
//
//   node examples/node/infer.js MODEL.onnx INPUT... [--passes T] [--seed S] [--deterministic]
//                               [--masks shared|independent] [--mask-seed S]
//                               [--samples] [--json] [--rule "text"]
//
// Masks: "shared" (the default where the file has a mask layout, docs/FORMAT.md: Mask sets) feeds
// one mask set of T passes, built from the mask seed, so pass t is the same sampled network for
// every image and the samples equal the Python runtime's for the same seed (`python cli.py infer
// --mask-seed S`); "independent" lets the graph draw new masks for every image and pass. The mask
// seed is --mask-seed, else --seed, else a fresh one (below 2**53); --json reports it as mask_seed.
//
// Bad input is one line on stderr and exit code 1; a wrong command line is exit code 2.

import { readFile } from "node:fs/promises";
import { relative } from "node:path";
import process from "node:process";

import ort from "onnxruntime-node";

import {
  MINSTD, feeds, maskSet, parseRule, passesOf, preprocessImage, readModelFile, singlePassOutputs, summarize,
  withFreshSeeds,
} from "../lib/mcdrop.mjs";
import { readArrayFile } from "./arrays.mjs";
import { decodeImage } from "./images.mjs";

const USAGE = "usage: node infer.js MODEL.onnx IMAGE.png|IMAGE.jpg|ARRAY.npy|ARRAY.json... [--passes T] [--seed S] [--deterministic] "
  + '[--masks shared|independent] [--mask-seed S] [--samples] [--json] [--rule "text"]';
const MASK_MODES = ["shared", "independent"];
const ARRAY_EXTENSIONS = [".npy", ".json"];
const MAX_MASK_SEED = (1n << 64n) - 1n;

class UsageError extends Error {}

function parseArgs(argv) {
  const options = {
    passes: undefined, seed: undefined, deterministic: false, samples: false, json: false, rule: undefined,
    masks: undefined, maskSeed: undefined,
  };
  const paths = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === "--help" || arg === "-h") {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else if (arg === "--passes") options.passes = positiveInteger(value(), "--passes", 1);
    else if (arg === "--seed") options.seed = positiveInteger(value(), "--seed", 0);
    else if (arg === "--rule") options.rule = value();
    else if (arg === "--masks") {
      options.masks = value();
      if (!MASK_MODES.includes(options.masks)) {
        throw new UsageError(`--masks must be one of ${MASK_MODES.join(", ")}, got ${JSON.stringify(options.masks)}`);
      }
    } else if (arg === "--mask-seed") options.maskSeed = maskSeed(value());
    else if (arg === "--deterministic") options.deterministic = true;
    else if (arg === "--samples") options.samples = true;
    else if (arg === "--json") options.json = true;
    else if (arg.startsWith("--")) throw new UsageError(`unknown option ${arg}`);
    else paths.push(arg);
  }
  if (paths.length < 2) throw new UsageError("give a model file and at least one input (image or array)");
  if (options.maskSeed !== undefined && options.masks === "independent") {
    throw new UsageError("--mask-seed is for --masks shared");
  }
  return { model: paths[0], inputs: paths.slice(1), ...options };
}

function positiveInteger(text, name, least) {
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text)) || Number(text) < least) {
    throw new Error(`${name} must be an integer >= ${least}, got ${JSON.stringify(text)}`);
  }
  return Number(text);
}

// A mask seed, 0 to 2**64 - 1: a Number up to 2**53 - 1, a BigInt above.
function maskSeed(text) {
  if (!/^\d+$/.test(text) || BigInt(text) > MAX_MASK_SEED) {
    throw new Error(`--mask-seed must be an integer from 0 to 2**64 - 1, got ${JSON.stringify(text)}`);
  }
  const seed = BigInt(text);
  return seed <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(seed) : seed;
}

// A fresh mask seed below 2**53 (a seed that survives JSON in every language, as the Python
// runtime's), from crypto entropy.
function freshMaskSeed() {
  const [high, low] = globalThis.crypto.getRandomValues(new Uint32Array(2));
  return (high >>> 11) * 2 ** 32 + low;
}

// The document as JSON. JSON has no BigInt: a mask seed above 2**53 - 1 is written as its digits,
// a plain JSON number (the top-level key comes before any text taken from files).
function toJson(document) {
  const seed = document.mask_seed;
  if (typeof seed !== "bigint") return JSON.stringify(document, null, 2);
  return JSON.stringify({ ...document, mask_seed: null }, null, 2).replace('"mask_seed": null', `"mask_seed": ${seed}`);
}

async function readBytes(path, what) {
  try {
    return new Uint8Array(await readFile(path));
  } catch (err) {
    throw new Error(`${path}: cannot read ${what} (${err.code === "ENOENT" ? "no such file" : err.code || err.message})`);
  }
}

const firstLine = (text) => String(text).split("\n").find((line) => line.trim()) ?? String(text);

// Names and labels come from files: control characters are shown as escapes, never sent raw.
const safe = (text) => String(text).replace(/\p{C}/gu, (c) => `\\u${c.codePointAt(0).toString(16).padStart(4, "0")}`);

const shown = (path) => {
  const rel = relative(process.cwd(), path);
  return rel.startsWith("..") ? path : rel;
};

function table(document, results) {
  const lines = [`model ${safe(document.model)}  passes ${document.passes}${document.stochastic ? "" : " (dropout off)"}`];
  const sets = results.some((r) => r.prediction_set);
  const header = ["input", "label", "confidence", "std", "mutual_information", ...(sets ? ["conformal set"] : []), ""];
  const rows = results.map((r, i) => [safe(document.results[i].input), safe(r.label), r.confidence.toFixed(3), r.std.toFixed(3),
    r.mutual_information.toFixed(3), ...(sets ? [`{${r.prediction_set.map(safe).join(",")}}`] : []), r.uncertain ? "UNCERTAIN" : ""]);
  const widths = header.map((_, j) => Math.max(...[header, ...rows].map((row) => row[j].length)));
  for (const row of [header, ...rows]) lines.push(row.map((cell, j) => cell.padEnd(widths[j])).join("  ").trimEnd());
  lines.push(`UNCERTAIN if ${safe(results.ruleText)} (${results.ruleSource} rule)`);
  return lines.join("\n");
}

// What `make` returns, or its error with the file's name in front.
function named(path, make) {
  try {
    return make();
  } catch (err) {
    throw new Error(`${path}: ${err.message}`);
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const rule = args.rule === undefined ? undefined : parseRule(args.rule); // a bad rule fails before any work
  const modelBytes = await readBytes(args.model, "model file");
  const parsed = named(args.model, () => readModelFile(modelBytes));
  const { metadata } = parsed;
  const inputs = [], names = [];
  for (const path of args.inputs) {
    if (ARRAY_EXTENSIONS.some((extension) => path.toLowerCase().endsWith(extension))) {
      // A batch already preprocessed, one result per row (`python cli.py infer` names them path[i]).
      const array = readArrayFile(await readBytes(path, "array"), path, metadata);
      inputs.push(array);
      names.push(...array.names.map((name) => `${shown(path)}${name.slice(path.length)}`));
    } else {
      const pixels = decodeImage(await readBytes(path, "image"), path);
      inputs.push(named(path, () => preprocessImage(pixels, metadata)));
      names.push(shown(path));
    }
  }
  // Fresh seeds in the bytes before the session is created, else every run replays the same
  // dropout masks (docs/FORMAT.md: Random nodes). onnxruntime-node on Linux and macOS draws with
  // minstd_rand0.
  const fresh = named(args.model, () => withFreshSeeds(modelBytes, { seed: args.seed, multiplier: MINSTD.node, parsed }));
  const session = await ort.InferenceSession.create(fresh).catch((err) => {
    throw new Error(`${args.model}: onnxruntime cannot load it (${firstLine(err.message)})`);
  });
  const passes = args.deterministic ? 1 : (args.passes ?? metadata.default_passes);
  const stochastic = !args.deterministic;
  const mode = args.masks ?? (parsed.maskLayout ? "shared" : "independent");
  if (mode === "shared" && !parsed.maskLayout) {
    const why = metadata.format < 3 ? `it is format ${metadata.format}, from before mask sets; export it again`
      : "its noise shapes depend on the input size";
    throw new Error(`${args.model}: this file cannot take a shared mask set (${why}); use --masks independent`);
  }
  const shared = mode === "shared" && stochastic;
  const maskSeedUsed = shared ? (args.maskSeed ?? args.seed ?? freshMaskSeed()) : null;
  // The shared set: row t is pass t's masks for every image (built once, fed whole).
  const masks = shared ? named(args.model, () => maskSet(metadata, maskSeedUsed, { count: passes })) : undefined;
  const outputs = await session.run(feeds(ort, inputs, { passes, stochastic, masks }, metadata));
  // A Monte Carlo run's energy and max_logit are pass averages: the rule's come from one plain run.
  const plain = stochastic ? await singlePassOutputs(ort, session, inputs, metadata) : {};
  const results = summarize({ ...outputs, ...plain }, metadata, { rule });
  const samples = outputs[`${metadata.outputs[0].prefix}samples`];
  const document = {
    model: shown(args.model), passes, stochastic, seed: args.seed ?? null,
    masks: stochastic ? mode : null, mask_seed: maskSeedUsed,
    rule: results.ruleText, rule_source: results.ruleSource,
    results: results.map((r, b) => ({
      input: names[b], label: r.label, confidence: r.confidence, mean: r.mean, variance: r.variance,
      predictive_entropy: r.predictive_entropy, expected_entropy: r.expected_entropy, mutual_information: r.mutual_information,
      uncertain: r.uncertain,
      ...(r.prediction_set ? { prediction_set: r.prediction_set } : {}),
      ...(args.samples ? { samples: passesOf(samples, b) } : {}),
    })),
  };
  process.stdout.write(`${args.json ? toJson(document) : table(document, results)}\n`);
  await session.release();
}

main().catch((err) => {
  process.stderr.write(`error: ${safe(firstLine(err?.message ?? err))}\n`);
  process.exitCode = err instanceof UsageError ? 2 : 1;
  if (err instanceof UsageError) process.stderr.write(`${USAGE}\n`);
});
