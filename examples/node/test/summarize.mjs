// Test hook for tests/test_node_example.py: summarize and the rules on given samples.
//   node summarize.mjs < request.json   {metadata, samples: {dims: [T, B, C], data: [...]},
//                                        rules: ["text" or null (the file's rule)]}
// Prints {results: [summarize's array, with its ruleText and ruleSource, or {error}] per rule}.
import { summarize } from "../../lib/mcdrop.mjs";

let text = "";
for await (const chunk of process.stdin) text += chunk;
const { metadata, samples, rules } = JSON.parse(text);
const outputs = { [`${metadata.outputs[0].prefix ?? ""}samples`]: { dims: samples.dims, data: Float32Array.from(samples.data) } };
const results = rules.map((rule) => {
  try {
    const summary = summarize(outputs, metadata, { rule: rule ?? undefined });
    return { inputs: [...summary], ruleText: summary.ruleText, ruleSource: summary.ruleSource };
  } catch (err) {
    return { error: err.message };
  }
});
process.stdout.write(JSON.stringify({ results }));
