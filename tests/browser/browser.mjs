// Shared by Herald's browser tests (sse_failover.mjs, poll_stream_failover.mjs): arguments,
// reporting on stdout (one JSON object a line) and a bounded session in Debian's chromium,
// driven by playwright-core with a fresh --user-data-dir.

import { chromium } from 'playwright-core';

// Parse `--flag value` pairs into a copy of `defaults` (numbers stay numbers). `names` maps
// each flag to its key; --url, --user-data-dir and --screenshot are always accepted and required.
export function parseArgs(argv, defaults, names) {
  const args = { ...defaults };
  const all = {
    '--url': 'url', '--user-data-dir': 'userDataDir', '--screenshot': 'screenshot',
    '--settle-ms': 'settleMs', '--timeout-ms': 'timeoutMs', ...names,
  };
  for (let i = 2; i < argv.length; i += 2) {
    const key = all[argv[i]];
    if (!key || i + 1 >= argv.length) throw new Error(`bad argument ${argv[i]}`);
    const v = argv[i + 1];
    args[key] = typeof args[key] === 'number' ? Number(v) : v;
  }
  for (const k of ['url', 'userDataDir', 'screenshot'])
    if (!args[k]) throw new Error(`--${k} is required`);
  return args;
}

export function report(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// Open args.url in headless chromium and run `body(page, left)`, where left() is the time that
// remains of args.timeoutMs; the whole session is bounded by it. Reports {"event":"error"} and
// exits 1 on any failure or time-out; exits 0 when `body` returns.
export function run(args, body) {
  const deadline = Date.now() + args.timeoutMs;
  const left = () => Math.max(1, deadline - Date.now());
  const session = async () => {
    const context = await chromium.launchPersistentContext(args.userDataDir, {
      executablePath: '/usr/bin/chromium',
      headless: false, // the new headless mode comes from the flag below
      args: [
        '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
      timeout: left(),
    });
    const timer = setTimeout(() => {
      report({ event: 'error', message: `timed out after ${args.timeoutMs} ms` });
      process.exit(1);
    }, left());
    try {
      const page = context.pages()[0] || await context.newPage();
      page.on('console', (m) => process.stderr.write(`console.${m.type()}: ${m.text()}\n`));
      page.on('pageerror', (e) => process.stderr.write(`pageerror: ${e.message}\n`));
      await page.goto(args.url, { timeout: left() });
      await body(page, left);
    } finally {
      clearTimeout(timer);
      await context.close();
    }
  };
  session().then(() => process.exit(0), (e) => {
    report({ event: 'error', message: String(e && e.stack || e) });
    process.exit(1);
  });
}
