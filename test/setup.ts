// resolvePollPolicy loads policy.ts with require() on the first override; that finds the built
// .js next to dist/schedule.js, not a .ts source here, so the test runner loads it by import
import '../src/policy.js';
