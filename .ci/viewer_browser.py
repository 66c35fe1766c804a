#!/usr/bin/env python
"""Check unet3plus's PredictionViewer in a real browser.

Starts JupyterLab on 127.0.0.1 (a free port, a random token, a temporary root holding a small notebook that
builds a viewer, a confusion explorer and a worst-cases grid, or a copy of --notebook), opens the notebook in
headless Chromium through Selenium, accepts the kernel dialog, runs all cells, waits for the viewer's picture
(and, in the demo, checks the grid shows as an image), then drags the opacity slider and steps the sample
slider with the keyboard, checking each time that the displayed picture changed (its <img> source and its
pixels), clicks confusion-explorer cells (the cell dropdown must follow) and sends a listed image to the viewer
with 'show in viewer' (the viewer must then name it). Screenshots go to --out. Exits 1 with a message on any
failure; JupyterLab and the browser are always shut down. Needs Debian's `chromium` and `chromium-driver`.

    python .ci/viewer_browser.py --out /tmp/viewer_shots
"""
from __future__ import annotations
import argparse, io, json, os, secrets, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

DEMO_CELLS = [
    ("markdown", "# Viewer demo\n\nA tiny random-init UNet3+ on a few synthetic SPARK-layout images, in the prediction viewer."),
    ("code", "import tempfile, torch\n"
             "from unet3plus.synthetic import write_dataset\n"
             "from unet3plus.data import SparkSegmentation\n"
             "from unet3plus.model import UNet3Plus\n"
             "from unet3plus.viewer import PredictionViewer, ConfusionExplorer, worst_cases_grid\n"
             "root = write_dataset(tempfile.mkdtemp(), n_train=0, n_val=6, n_test=0, size=64, seed=0)\n"
             "ds = SparkSegmentation.from_root(root, 'val')\n"
             "torch.manual_seed(0)\n"
             "model = UNet3Plus('test_convnext', n_classes=3, pretrained=False, cat_channels=16)"),
    ("code", "viewer = PredictionViewer(model, ds)\nviewer"),
    ("code", "explorer = ConfusionExplorer(viewer)\nexplorer"),
    ("code", "worst_cases_grid(viewer, k=2)"),
]

# JupyterLab settings that keep pop-ups (news, update checks) from covering the page
LAB_SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings":
                {"fetchNews": "false", "checkForUpdates": False}}


class CheckFailed(Exception):
    "The browser check failed (message says why)."


def log(msg: str):
    "Print a timestamped progress line."
    print(f"[viewer_browser {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    "A TCP port free on 127.0.0.1 right now."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def find_tool(name: str, *candidates: str) -> str:
    "Path of an executable (first found), or a CheckFailed naming the Debian package."
    for c in candidates:
        p = shutil.which(c)
        if p: return p
    raise CheckFailed(f"{name} not found (looked for {', '.join(candidates)}): install Debian's chromium and chromium-driver")


def write_notebook(root: Path, notebook: Path | None) -> str:
    "Put the notebook to open into `root` (a copy of `notebook`, or the small demo) and return its name."
    if notebook is not None:
        if not notebook.is_file(): raise CheckFailed(f"--notebook {notebook}: no such file")
        shutil.copy(notebook, root / notebook.name); return notebook.name
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
                for kind, src in DEMO_CELLS]
    nbformat.write(nb, root / "viewer_demo.ipynb")
    return "viewer_demo.ipynb"


def start_lab(tmp: Path, root: Path, port: int, token: str) -> subprocess.Popen:
    "Start JupyterLab on 127.0.0.1:`port` with its config, runtime and settings dirs under `tmp`."
    env = dict(os.environ)
    for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython"),
                     ("JUPYTERLAB_SETTINGS_DIR", "settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces")]:
        (tmp / sub).mkdir(parents=True, exist_ok=True); env[var] = str(tmp / sub)
    for rel, val in LAB_SETTINGS.items():
        f = tmp / "settings" / rel; f.parent.mkdir(parents=True, exist_ok=True); f.write_text(json.dumps(val))
    env.pop("MPLBACKEND", None)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    logf = open(tmp / "jupyterlab.log", "w")
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_server(proc: subprocess.Popen, url: str, token: str, deadline: float, logfile: Path):
    "Poll JupyterLab's /api/status until it answers."
    while time.time() < deadline:
        if proc.poll() is not None:
            raise CheckFailed(f"JupyterLab exited with code {proc.returncode}:\n{logfile.read_text()[-3000:]}")
        try:
            req = urllib.request.Request(f"{url}/api/status", headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200: return
        except OSError: pass
        time.sleep(0.5)
    raise CheckFailed(f"JupyterLab did not answer at {url} in time:\n{logfile.read_text()[-3000:]}")


def stop_lab(proc: subprocess.Popen, url: str, token: str):
    "Ask JupyterLab to shut down (kernels too); terminate, then kill, its process group if it lingers."
    if proc.poll() is None:
        try:
            req = urllib.request.Request(f"{url}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(req, timeout=5).close()
        except OSError: pass
        try: proc.wait(timeout=8)
        except subprocess.TimeoutExpired: pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try: os.killpg(proc.pid, sig)          # the group this script started (start_new_session=True)
        except ProcessLookupError: return
        try: proc.wait(timeout=3); time.sleep(0.2)
        except subprocess.TimeoutExpired: continue


def start_browser(tmp: Path, chromium: str, chromedriver: str):
    "Headless Chromium driven by chromedriver, with a fresh profile under `tmp`."
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1500,1200",
                 f"--user-data-dir={tmp / 'chrome-profile'}"]:
        opts.add_argument(flag)
    service = Service(executable_path=chromedriver, log_output=str(tmp / "chromedriver.log"))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(60); driver.set_script_timeout(30)
    return driver


JS_SCROLL_TO_END = ("for (const e of document.querySelectorAll('.jp-WindowedPanel-outer, .jp-Notebook')) "
                    "e.scrollTop = e.scrollHeight;")   # the notebook's scroller: its last cells are rendered


def wait_until(what: str, fn, deadline: float, poll: float = 0.5):
    "Call `fn` until it returns something truthy, or raise CheckFailed naming `what` at the deadline."
    last = None
    while time.time() < deadline:
        try:
            v = fn()
            if v: return v
        except CheckFailed: raise
        except Exception as e: last = e           # elements may be re-rendered while we look
        time.sleep(poll)
    raise CheckFailed(f"timed out waiting for {what}" + (f" (last error: {last!r})" if last else ""))


JS_KERNEL = """const app = window.jupyterapp;
if (!app) return null;
// the notebook among the main area's widgets: JupyterLab 4.6 may leave the focus (currentWidget) on the file browser
const w = Array.from(app.shell.widgets('main')).find(x => x.sessionContext);
if (!w) return null;
if (app.shell.currentWidget !== w) app.shell.activateById(w.id);     // run-all-cells acts on the active notebook
return w.sessionContext.session && w.sessionContext.session.kernel ? w.sessionContext.session.kernel.status : null;"""

JS_ERRORS = """return Array.from(document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
       .map(e => e.innerText).filter(t => /Error|Traceback/.test(t));"""


def open_notebook(driver, url: str, token: str, name: str, deadline: float):
    "Open the notebook, accept the kernel dialog if JupyterLab shows one, and wait for an idle kernel."
    from selenium.webdriver.common.by import By
    driver.get(f"{url}/lab/tree/{name}?token={token}&reset")
    wait_until("JupyterLab to load", lambda: driver.execute_script("return !!window.jupyterapp && !!document.querySelector('.jp-NotebookPanel')"), deadline)
    accepted = False
    def ready():
        nonlocal accepted
        for b in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog .jp-Dialog-button.jp-mod-accept"):
            log(f"accepting dialog: {driver.find_element(By.CSS_SELECTOR, '.jp-Dialog').text.splitlines()[:1]}")
            b.click(); accepted = True; return False
        return driver.execute_script(JS_KERNEL) == "idle"
    wait_until("the kernel to start (idle)", ready, deadline)
    log("kernel idle" + (" (kernel dialog accepted)" if accepted else ""))


def image_state(driver, img) -> tuple[str, "np.ndarray"]:
    "The viewer picture's <img> source and its pixels as shown on screen."
    import numpy as np
    from PIL import Image
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", img)
    return img.get_attribute("src"), np.asarray(Image.open(io.BytesIO(img.screenshot_as_png)).convert("RGB"), np.int16)


def wait_changed(driver, find_img, before: tuple, what: str, deadline: float) -> tuple:
    "Wait until the viewer picture differs from `before` in source and pixels; return the new state."
    def n_changed(px) -> int:
        "Screen pixels that differ from `before` (any channel by more than 3 levels)."
        return int((abs(px - before[1]).max(-1) > 3).sum()) if px.shape == before[1].shape else px.shape[0] * px.shape[1]
    def changed():
        src, px = image_state(driver, find_img())
        return (src, px) if src != before[0] and n_changed(px) >= 10 else None
    state = wait_until(f"the picture to change after {what}", changed, deadline)
    log(f"picture changed after {what}: {n_changed(state[1])} of {state[1].shape[0] * state[1].shape[1]} screen pixels differ")
    return state


def readout(driver, cls: str) -> str:
    "Text of a slider's readout (the value shown beside it)."
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, f".u3p-viewer .{cls} .widget-readout")[-1].text.strip()


def check(driver, url: str, token: str, name: str, out: Path, deadline: float, expect_grid: bool = False):
    "Open, run, and drive the viewer; save screenshots into `out`."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    open_notebook(driver, url, token, name, deadline)
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    log("running all cells")
    def viewer_img():
        errs = driver.execute_script(JS_ERRORS)
        if errs: raise CheckFailed("a notebook cell failed:\n" + errs[0][-3000:])
        imgs = driver.find_elements(By.CSS_SELECTOR, ".u3p-viewer img.u3p-figure")
        return imgs[-1] if imgs and driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", imgs[-1]) else None
    try: wait_until("the viewer to render", viewer_img, deadline)
    except CheckFailed:
        driver.save_screenshot(str(out / "failed_render.png")); raise
    wait_until("the kernel to finish running", lambda: driver.execute_script(JS_KERNEL) == "idle", deadline)
    if expect_grid:      # the demo's last cell returns worst_cases_grid's figure: it must show as a PNG image
        def grid_pngs():     # JupyterLab renders cells below the window lazily (and late on a busy machine): scroll
            driver.execute_script(JS_SCROLL_TO_END)
            return driver.find_elements(By.CSS_SELECTOR, '.jp-OutputArea-output[data-mime-type="image/png"] img')
        try: pngs = wait_until("worst_cases_grid's image", grid_pngs, min(deadline, time.time() + 60))
        except CheckFailed: pngs = grid_pngs()
        if len(pngs) != 1: raise CheckFailed(f"worst_cases_grid should show one PNG image, the page has {len(pngs)}")
        driver.execute_script("for (const e of document.querySelectorAll('.jp-WindowedPanel-outer, .jp-Notebook')) e.scrollTop = 0;")
        log("worst_cases_grid shown as an image")
    find_img = lambda: driver.find_elements(By.CSS_SELECTOR, ".u3p-viewer img.u3p-figure")[-1]
    state = image_state(driver, find_img())
    driver.save_screenshot(str(out / "1_rendered.png")); find_img().screenshot(str(out / "1_picture.png"))
    log(f"viewer rendered: picture {state[1].shape[1]}x{state[1].shape[0]} px; opacity {readout(driver, 'u3p-opacity')}, sample {readout(driver, 'u3p-sample')}")

    # 1. drag the opacity slider's handle to the right (0.5 -> about 0.8)
    handle = driver.find_elements(By.CSS_SELECTOR, ".u3p-viewer .u3p-opacity .noUi-handle")[-1]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", handle)
    ActionChains(driver).click_and_hold(handle).pause(0.2).move_by_offset(25, 0).pause(0.1).move_by_offset(25, 0).pause(0.2).release().perform()
    state = wait_changed(driver, find_img, state, "dragging the opacity slider", deadline)
    op = readout(driver, "u3p-opacity")
    if float(op) <= 0.5: raise CheckFailed(f"dragging the opacity slider right left it at {op}")
    driver.save_screenshot(str(out / "2_opacity.png")); find_img().screenshot(str(out / "2_picture.png"))
    log(f"opacity now {op}")

    # 2. step the sample slider with the keyboard (focus its handle, press the right arrow)
    handle = driver.find_elements(By.CSS_SELECTOR, ".u3p-viewer .u3p-sample .noUi-handle")[-1]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus();", handle)
    ActionChains(driver).click(handle).pause(0.2).send_keys(Keys.ARROW_RIGHT).pause(0.2).perform()
    state = wait_changed(driver, find_img, state, "pressing the right arrow on the sample slider", deadline)
    sample = readout(driver, "u3p-sample")
    if sample != "1": raise CheckFailed(f"the sample slider shows {sample!r} after one step right from 0, expected '1'")
    driver.save_screenshot(str(out / "3_sample.png")); find_img().screenshot(str(out / "3_picture.png"))
    log(f"sample now {sample}")

    # 3. the confusion explorer, when the notebook shows one: click two cells, the cell dropdown must follow
    if driver.find_elements(By.CSS_SELECTOR, ".u3p-confusion"):
        for (t, p), text in [((0, 1), "true background -> predicted body"), ((1, 0), "true body -> predicted background")]:
            buttons = driver.find_elements(By.CSS_SELECTOR, ".u3p-confusion .widget-gridbox button")
            n = round(len(buttons) ** 0.5)
            if n * n != len(buttons) or n < 2: raise CheckFailed(f"the confusion explorer shows {len(buttons)} cell buttons, not a square matrix")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", buttons[t * n + p])
            buttons[t * n + p].click()
            def selected():
                sel = driver.find_elements(By.CSS_SELECTOR, ".u3p-confusion .widget-dropdown select")[-1]
                shown = driver.execute_script("return arguments[0].options[arguments[0].selectedIndex].text", sel)
                return shown if shown.replace("\xa0", " ") == text else None     # ipywidgets writes spaces as nbsp
            wait_until(f"the confusion explorer to select '{text}' after a click", selected, deadline)
            listed = len(driver.find_elements(By.CSS_SELECTOR, ".u3p-confusion .widget-select option"))
            log(f"confusion cell clicked: {text}; {listed} images listed")
        # find a cell listing an image the viewer does not show, pick that image and send it to the viewer:
        # the viewer's status line must then name it
        status = lambda: driver.find_elements(By.CSS_SELECTOR, ".u3p-viewer .u3p-status b")[-1].text
        def others():
            "Listed (option, name) pairs naming an image other than the shown one."
            opts = [(o, o.text.replace("\xa0", " ").rsplit(":", 1)[0])
                    for o in driver.find_elements(By.CSS_SELECTOR, ".u3p-confusion .widget-select option")]
            return [(o, name) for o, name in opts if name != shown]
        shown, chosen = status(), None
        for k in range(n * n):
            driver.find_elements(By.CSS_SELECTOR, ".u3p-confusion .widget-gridbox button")[k].click()
            sel = lambda: driver.find_elements(By.CSS_SELECTOR, ".u3p-confusion .widget-dropdown select")[-1]
            wait_until(f"the confusion explorer to select cell {k}", lambda: driver.execute_script("return arguments[0].selectedIndex", sel()) == k, deadline)
            try: chosen = wait_until("a listed image", lambda: others(), min(deadline, time.time() + 2))[0][1]
            except CheckFailed: continue                      # this cell lists no other image
            break
        if chosen is None: raise CheckFailed(f"no confusion cell lists an image other than the one shown ({shown})")
        def go():
            "Select the chosen image in the list and press 'show in viewer'; true once the viewer shows it."
            for o, name in others():
                if name == chosen: o.click(); break
            [b for b in driver.find_elements(By.CSS_SELECTOR, ".u3p-confusion button") if "show in viewer" in b.text][-1].click()
            time.sleep(0.5)
            return status() == chosen
        wait_until(f"'show in viewer' to show {chosen}", go, deadline)
        log(f"'show in viewer' moved the viewer from {shown} to {chosen}")
        driver.save_screenshot(str(out / "4_confusion.png"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="folder for the screenshots (default: a new temporary folder)")
    p.add_argument("--notebook", type=Path, default=None, help="notebook to open instead of the built-in demo (its last viewer is driven)")
    p.add_argument("--timeout", type=float, default=150, help="seconds for the checks, shutdown excluded (default 150)")
    p.add_argument("--keep", action="store_true", help="keep the temporary JupyterLab root and logs")
    a = p.parse_args(argv)
    t0 = time.time(); deadline = t0 + a.timeout
    out = a.out or Path(tempfile.mkdtemp(prefix="viewer_shots_"))
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="viewer_browser_"))
    root = tmp / "root"; root.mkdir()
    proc = driver = None; url = token = ""
    def on_alarm(signum, frame): raise CheckFailed(f"the whole check took longer than --timeout {a.timeout:.0f} s")
    signal.signal(signal.SIGALRM, on_alarm); signal.alarm(int(a.timeout) + 10)   # a hard stop over the per-wait deadlines
    try:
        chromium = find_tool("chromium", "chromium", "chromium-browser", "google-chrome")
        chromedriver = find_tool("chromedriver", "chromedriver")
        name = write_notebook(root, a.notebook)
        port, token = free_port(), secrets.token_hex(16)
        url = f"http://127.0.0.1:{port}"
        log(f"starting JupyterLab at {url} (root {root})")
        proc = start_lab(tmp, root, port, token)
        wait_for_server(proc, url, token, min(deadline, time.time() + 60), tmp / "jupyterlab.log")
        log("JupyterLab is up; starting headless Chromium")
        driver = start_browser(tmp, chromium, chromedriver)
        check(driver, url, token, name, out, deadline, expect_grid=a.notebook is None)
        log(f"OK in {time.time() - t0:.0f} s; screenshots in {out}")
        return 0
    except CheckFailed as e:
        log(f"FAILED after {time.time() - t0:.0f} s: {e}")
        if driver is not None:
            try: driver.save_screenshot(str(out / "failed.png")); log(f"screenshot of the failure: {out / 'failed.png'}")
            except Exception: pass
        return 1
    except Exception as e:
        log(f"FAILED after {time.time() - t0:.0f} s with {type(e).__name__}: {e}")
        return 1
    finally:
        signal.alarm(0)
        if driver is not None:
            try: driver.quit()
            except Exception: pass
        if proc is not None: stop_lab(proc, url, token)
        if a.keep: log(f"kept {tmp}")
        else: shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
