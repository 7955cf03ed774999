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

import { parseArgs, report, run } from './browser.mjs';

const args = parseArgs(process.argv, { expect: 30, pauseAt: 10, settleMs: 500, timeoutMs: 60000 },
  { '--expect': 'expect', '--pause-at': 'pauseAt' });

run(args, async (page, left) => {
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
});
