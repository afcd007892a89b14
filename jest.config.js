// Two projects: `unit` needs nothing running; `temporal` (files named *.temporal.test.ts)
// gets one real Temporal dev server per run, started by its globalSetup.
const transform = { '^.+\\.tsx?$': ['@swc/jest', { jsc: { target: 'es2022' } }] };
const common = {
  transform,
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  moduleFileExtensions: ['ts', 'js', 'json'],
};
module.exports = {
  testTimeout: 120_000,
  // Three suites at a time even on a 2-core machine (jest's default there is one): most of a
  // temporal suite's time is spent waiting on the server, timers and child processes (the status
  // suite waits out twice a 75 s RPO). Measured on this machine, all 494 tests: 2 workers 975-1,083 s,
  // 3 workers 767 s. Each jest worker has a Temporal namespace of its own
  // (test/support/stack.ts), so they never share queues.
  maxWorkers: 3,
  // A suite that leaves a handle open (seen: the CLI suite's child-process pipes) must not keep
  // `npm test` from ending after every test has reported: CI would hang until its time limit.
  forceExit: true,
  reporters: ['default', '<rootDir>/test/support/summary-reporter.js'],
  projects: [
    {
      ...common,
      displayName: 'unit',
      testMatch: ['**/*.test.ts'],
      testPathIgnorePatterns: ['\\.temporal\\.test\\.ts$', '/node_modules/'],
    },
    {
      ...common,
      displayName: 'temporal',
      testMatch: ['**/*.temporal.test.ts'],
      // The replay suite's recorder writes histories; it runs only when asked for
      // (HVP_RECORD_HISTORIES=..., see its header), never as part of `npm test`.
      testPathIgnorePatterns: process.env.HVP_RECORD_HISTORIES ? ['/node_modules/'] : ['/node_modules/', '/test/replay/record-histories\\.temporal\\.test\\.ts$'],
      globalSetup: '<rootDir>/test/support/temporal-global-setup.ts',
      globalTeardown: '<rootDir>/test/support/temporal-global-teardown.ts',
    },
  ],
};
