// Writes schema/scenario.schema.json, the JSON Schema of what people type in a scenario file, so that
// editors (yaml-language-server) can complete and check it. Run with `npm run schema`.

import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import * as z from "zod";
import { scenarioSchema } from "./schema.ts";

/** Where the generated schema lives, relative to the repository root. */
export const SCHEMA_FILE = fileURLToPath(new URL("../../schema/scenario.schema.json", import.meta.url));

/** The JSON Schema text (2020-12, input side of the zod schema), ending with a newline. */
export function scenarioJsonSchemaText(): string {
  const schema = z.toJSONSchema(scenarioSchema, { io: "input", target: "draft-2020-12" });
  return `${JSON.stringify({ title: "vmlab scenario", ...schema }, null, 2)}\n`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  mkdirSync(dirname(SCHEMA_FILE), { recursive: true });
  writeFileSync(SCHEMA_FILE, scenarioJsonSchemaText());
  console.log(`wrote ${SCHEMA_FILE}`);
}
