// End-to-end browser test of scripts/public/index.html against a running wshost chat
// (scripts/chat.rhai), with playwright-core and the system Chromium (no browser download).
//
//   CHAT_URL="http://127.0.0.1:HTTPPORT/?ws=ws://127.0.0.1:WSPORT/" \
//   SCREENSHOT=/tmp/chat.png node tests/browser/chat.mjs
//
// Env: CHAT_URL (required) the page URL; SCREENSHOT (optional) PNG path; CHROMIUM (optional)
// the browser binary, default /usr/bin/chromium.
// Prints `browser chat: ok` and exits 0, or `browser chat: FAILED: <reason>` and exits 1.

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join as joinPath } from "node:path";

const TOTAL_TIMEOUT_MS = 60_000;
const STEP_TIMEOUT_MS = 10_000;

const chatUrl = process.env.CHAT_URL;
const screenshot = process.env.SCREENSHOT;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

let context = null;
let userDataDir = null;
let finished = false;

async function cleanup() {
  if (context) {
    const c = context;
    context = null;
    await Promise.race([c.close().catch(() => {}), new Promise((r) => setTimeout(r, 5000))]);
  }
  if (userDataDir) {
    try { rmSync(userDataDir, { recursive: true, force: true }); } catch { /* ignore */ }
    userDataDir = null;
  }
}

async function finish(error) {
  if (finished) return;
  finished = true;
  await cleanup();
  if (error) {
    const reason = String(error?.message ?? error).split("\n")[0];
    console.log(`browser chat: FAILED: ${reason}`);
    process.exit(1);
  }
  console.log("browser chat: ok");
  process.exit(0);
}

const watchdog = setTimeout(
  () => finish(new Error(`timed out after ${TOTAL_TIMEOUT_MS / 1000} s`)),
  TOTAL_TIMEOUT_MS,
);
watchdog.unref?.();

// Sets the name, clicks Join.
async function join(page, name) {
  await page.goto(chatUrl, { waitUntil: "load", timeout: STEP_TIMEOUT_MS });
  await page.fill("#name", name);
  await page.click("#join");
}

async function waitConnected(page, who) {
  try {
    await page.waitForFunction(
      () => {
        const s = document.querySelector("#status");
        return s && s.classList.contains("connected") && s.textContent.trim().startsWith("Connected");
      },
      null,
      { timeout: STEP_TIMEOUT_MS },
    );
  } catch {
    const status = await page.textContent("#status").catch(() => "?");
    throw new Error(`${who} not connected within ${STEP_TIMEOUT_MS / 1000} s (status: "${status}")`);
  }
}

async function send(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

// Waits until an <li> of #messages reads exactly `expected`.
async function expectMessage(page, who, expected) {
  try {
    await page.waitForFunction(
      (want) => [...document.querySelectorAll("#messages li")]
        .some((li) => li.textContent.trim() === want),
      expected,
      { timeout: STEP_TIMEOUT_MS },
    );
  } catch {
    const got = await page.$$eval("#messages li", (lis) => lis.map((li) => li.textContent.trim()))
      .catch(() => []);
    throw new Error(`${who} did not show "${expected}" within ${STEP_TIMEOUT_MS / 1000} s `
      + `(messages: ${JSON.stringify(got)})`);
  }
}

async function main() {
  if (!chatUrl) throw new Error("CHAT_URL is not set");

  userDataDir = mkdtempSync(joinPath(tmpdir(), "wshost-chat-chromium-"));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    viewport: { width: 640, height: 480 },
    timeout: 30_000,
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);

  const errors = [];
  const pageA = context.pages()[0] ?? await context.newPage();
  const pageB = await context.newPage();
  for (const [who, page] of [["A", pageA], ["B", pageB]]) {
    page.on("pageerror", (e) => errors.push(`page ${who}: ${e.message}`));
  }

  // Both pages share one profile and so one localStorage: join one after the other.
  await join(pageA, "Alice");
  await waitConnected(pageA, "Alice's page");
  await join(pageB, "Bob");
  await waitConnected(pageB, "Bob's page");

  await send(pageA, "Hello from Alice");
  await expectMessage(pageA, "Alice's page", "Alice: Hello from Alice");   // shown locally
  await expectMessage(pageB, "Bob's page", "Alice: Hello from Alice");

  await send(pageB, "Hi Alice");
  await expectMessage(pageB, "Bob's page", "Bob: Hi Alice");
  await expectMessage(pageA, "Alice's page", "Bob: Hi Alice");

  if (errors.length) throw new Error(`JavaScript error: ${errors[0]}`);

  if (screenshot) {
    await pageB.bringToFront();
    await pageB.screenshot({ path: screenshot, fullPage: true });
  }
}

main().then(() => finish(), (e) => finish(e));
