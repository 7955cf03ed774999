// Herald browser test: the demo page's EventSource survives the loss of its edge.
//
// Drives Debian's chromium with playwright-core. Opens --url (the edge's page behind a proxy,
// with ?topic=...), and reports on stdout, one JSON object a line, what the test driving it
// (tests/integration/test_15_browser.py) needs to know:
//   {"event":"connected"}                 the page's EventSource is open
//   {"event":"reached","count":N}         the page holds --pause-at messages (the test now kills
//                                         the edge the browser is on and publishes the rest)
//   {"event":"done","received":[...],"log":[...],"status":"...","screenshot":"..."}
//                                         the page holds --expect messages (then --settle-ms more,
//                                         to catch duplicates); received = window.heraldReceived,
//                                         log = the page's message list (resets included)
//   {"event":"error","message":"..."}     anything else; exit status 1
// Every wait is bounded by --timeout-ms. The browser gets a fresh --user-data-dir.
//
// Usage: node sse_failover.mjs --url URL --user-data-dir DIR --screenshot PNG
//                              [--expect 30] [--pause-at 10] [--settle-ms 500] [--timeout-ms 60000]

import { chromium } from 'playwright-core';

function parseArgs(argv) {
  const args = { expect: 30, pauseAt: 10, settleMs: 500, timeoutMs: 60000 };
  const names = {
    '--url': 'url', '--user-data-dir': 'userDataDir', '--screenshot': 'screenshot',
    '--expect': 'expect', '--pause-at': 'pauseAt', '--settle-ms': 'settleMs',
    '--timeout-ms': 'timeoutMs',
  };
  for (let i = 2; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (!key || i + 1 >= argv.length) throw new Error(`bad argument ${argv[i]}`);
    const v = argv[i + 1];
    args[key] = typeof args[key] === 'number' ? Number(v) : v;
  }
  for (const k of ['url', 'userDataDir', 'screenshot'])
    if (!args[k]) throw new Error(`--${k} is required`);
  return args;
}

function report(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function main() {
  const args = parseArgs(process.argv);
  const deadline = Date.now() + args.timeoutMs;
  const left = () => Math.max(1, deadline - Date.now());
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
    await page.waitForFunction(
      () => document.getElementById('status').textContent.startsWith('connected to'),
      null, { timeout: left(), polling: 50 });
    report({ event: 'connected' });
    await page.waitForFunction((n) => window.heraldReceived.length >= n, args.pauseAt,
      { timeout: left(), polling: 50 });
    report({ event: 'reached', count: await page.evaluate(() => window.heraldReceived.length) });
    await page.waitForFunction((n) => window.heraldReceived.length >= n, args.expect,
      { timeout: left(), polling: 50 });
    await page.waitForTimeout(Math.min(args.settleMs, left()));
    const state = await page.evaluate(() => ({
      received: window.heraldReceived,
      log: [...document.querySelectorAll('#messages li')].map((li) => li.textContent),
      status: document.getElementById('status').textContent,
    }));
    await page.screenshot({ path: args.screenshot, fullPage: true, timeout: left() });
    report({ event: 'done', ...state, screenshot: args.screenshot });
  } finally {
    clearTimeout(timer);
    await context.close();
  }
}

main().then(() => process.exit(0), (e) => {
  report({ event: 'error', message: String(e && e.stack || e) });
  process.exit(1);
});
