// Writes config/default.json from the daemon's config schema: DEFAULT_CONFIG, its parse of {}.
// test/config.test.ts fails while the file and the schema differ. Usage: npm run config:defaults
import { writeFileSync } from 'node:fs';
// from the build: node runs this file with type stripping, which does not map .js to .ts
import { DEFAULT_CONFIG } from '../dist/daemon/config.js';

writeFileSync(new URL('../config/default.json', import.meta.url), `${JSON.stringify(DEFAULT_CONFIG, null, 2)}\n`);
