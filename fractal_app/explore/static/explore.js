// fractal-app explore: the page. A Leaflet map of 2D fractals (tiles rendered on demand by
// the server with the providers' kernels), a camera view of 3D ones, controls for the
// scene, save/load of the exact scene JSON `fractal-app render` and CreateTask take, and a
// "render" button that runs the one-machine Golem lifecycle on the current view.
"use strict";

(async function main() {
  const $ = (id) => document.getElementById(id);
  const info = await (await fetch("/api/info")).json();

  // Fields the view decides (the map, or the render box for the resolution).
  const VIEW_FIELDS = ["center", "width", "resolution"];
  // Pixels per complex unit at zoom 0; zoom z has 2**z times as many.
  const PIXELS_PER_UNIT = info.tile_size / info.tile_width_at_zoom_0;
  const EDGE = info.extent * 0.999;

  // The person's scene: every field but the view. A loaded scene's own centre and width
  // are kept verbatim (loadedView) until the view moves, so a load-save round trip is exact.
  let scene = {};
  let loadedView = null;
  let settingView = false;

  const withoutView = (s) => {
    const out = { ...s };
    for (const key of VIEW_FIELDS) delete out[key];
    return out;
  };
  const isThreeD = () => info.three_d.includes(scene.fractal);
  const has = (key) => key in info.defaults[scene.fractal];
  const maxZoom = () => info.max_zoom[scene.precision] ?? info.max_zoom.float64;

  function message(text) {
    $("message").textContent = text || "";
  }

  // --- the map (2D) ---------------------------------------------------------------------

  const crs = L.extend({}, L.CRS.Simple, {
    // Longitude is Re, latitude is Im; pixel rows grow downwards as Im decreases.
    transformation: new L.Transformation(1, 0, -1, 0),
    scale: (zoom) => PIXELS_PER_UNIT * Math.pow(2, zoom),
    zoom: (scale) => Math.log2(scale / PIXELS_PER_UNIT),
  });
  const map = L.map("map", {
    crs,
    zoomSnap: 0,
    zoomDelta: 0.5,
    wheelPxPerZoomLevel: 90,
    minZoom: 0,
    maxZoom: info.max_zoom.float64,
    attributionControl: false,
    maxBounds: [[-info.extent, -info.extent], [info.extent, info.extent]],
    maxBoundsViscosity: 1,
  });
  const unitsPerPixel = (zoom) => 1 / (PIXELS_PER_UNIT * Math.pow(2, zoom));

  // The scene fields a tile depends on, as the tile URLs carry them.
  const tileSceneJson = () => {
    const preview = withoutView(scene);
    for (const key of ["output", "bit_depth", "env"]) delete preview[key];
    return JSON.stringify(preview);
  };

  function tileLayer(level, zIndex) {
    const layer = L.tileLayer(`/tile/{z}/{x}/{y}.png?level=${level}&scene={scene}`, {
      scene: () => encodeURIComponent(tileSceneJson()),
      tileSize: info.tile_size,
      minNativeZoom: 0,
      maxNativeZoom: info.max_zoom.float64,
      maxZoom: info.max_zoom.float64,
      noWrap: true,
      bounds: [[-EDGE, -EDGE], [EDGE, EDGE]],
      keepBuffer: 1,
      updateWhenZooming: false,
      className: `${level}-tiles`,
      zIndex,
    });
    layer.on("tileerror", async (event) => {
      const answer = await fetch(layer.getTileUrl(event.coords));
      if (!answer.ok) message(`tile: ${await answer.text()}`);
    });
    return layer.addTo(map);
  }
  // Coarse previews underneath, full tiles on top: a new view fills in at a quarter of the
  // resolution first (the server renders those before any full tile), then sharpens.
  const layers = { coarse: tileLayer("coarse", 1), full: tileLayer("full", 2) };
  // Once every full tile is in, the previews underneath are hidden: at fractional zoom the
  // full tiles' anti-aliased edges would let them show through as hairlines.
  layers.full.on("loading", () => layers.coarse.setOpacity(1));
  layers.full.on("load", () => layers.coarse.setOpacity(0));

  const resolution = () => [Number($("res-w").value) || 1, Number($("res-h").value) || 1];

  // The poster frame: the largest rectangle of the poster's shape that fits in the map.
  function frameWidth() {
    const size = map.getSize();
    const [w, h] = resolution();
    return Math.min(size.x, (size.y * w) / h) * unitsPerPixel(map.getZoom());
  }
  // Enough decimals that a poster pixel is resolved, and two more.
  const digitsFor = (pixelSize) => Math.min(100, Math.max(1, Math.ceil(-Math.log10(pixelSize)) + 2));

  function currentView() {
    if (loadedView) return loadedView;
    const centre = map.getCenter();
    const width = frameWidth();
    const digits = digitsFor(width / resolution()[0]);
    return {
      center: [centre.lng.toFixed(digits), centre.lat.toFixed(digits)],
      width: Number(width.toPrecision(8)),
    };
  }

  function setView(center, width) {
    const size = map.getSize();
    const [w, h] = resolution();
    const framePixels = Math.min(size.x, (size.y * w) / h);
    const zoom = Math.log2(framePixels / (PIXELS_PER_UNIT * Number(width)));
    settingView = true;
    try {
      map.setView([Number(center[1]), Number(center[0])], zoom, { animate: false });
    } finally {
      settingView = false;
    }
  }
  map.on("movestart zoomstart", () => {
    if (!settingView) loadedView = null;
  });

  const frame = L.rectangle([[0, 0], [1, 1]], {
    interactive: false, fill: false, color: "#ffd98a", weight: 1, dashArray: "6 6",
  }).addTo(map);

  function showView() {
    if (isThreeD()) {
      const cam = scene.camera;
      $("cam-position").textContent = cam.position.map((v) => v.toFixed(4)).join(", ");
      $("cam-look-at").textContent = cam.look_at.map((v) => v.toFixed(4)).join(", ");
      return;
    }
    const view = currentView();
    $("center-re").textContent = view.center[0];
    $("center-im").textContent = view.center[1];
    $("view-width").textContent = String(view.width);
    $("zoom").textContent = map.getZoom().toFixed(2);
    const [w, h] = resolution();
    const re = Number(view.center[0]);
    const im = Number(view.center[1]);
    const half = view.width / 2;
    frame.setBounds([[im - (half * h) / w, re - half], [im + (half * h) / w, re + half]]);
  }
  map.on("move zoom resize", showView);

  function redrawTiles() {
    map.setMaxZoom(maxZoom());
    // Removed and added again rather than redraw(): Leaflet 1.9's redraw asks for tiles at
    // the map's fractional zoom (2.13) instead of the nearest tile level.
    for (const layer of [layers.coarse, layers.full]) {
      layer.remove();
      layer.addTo(map);
    }
  }

  // --- the camera view (3D) -------------------------------------------------------------

  const vec = {
    add: (a, b) => a.map((x, i) => x + b[i]),
    sub: (a, b) => a.map((x, i) => x - b[i]),
    scale: (a, s) => a.map((x) => x * s),
    dot: (a, b) => a.reduce((sum, x, i) => sum + x * b[i], 0),
    cross: (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]],
    unit: (a) => vec.scale(a, 1 / Math.hypot(...a)),
  };
  // Rodrigues: v turned by angle (radians) about axis.
  function rotate(v, axis, angle) {
    const k = vec.unit(axis);
    const c = Math.cos(angle);
    const s = Math.sin(angle);
    return vec.add(vec.add(vec.scale(v, c), vec.scale(vec.cross(k, v), s)),
      vec.scale(k, vec.dot(k, v) * (1 - c)));
  }
  const tidy = (v) => v.map((x) => Number(x.toFixed(9)));

  function moveCamera(change) {
    const cam = { ...scene.camera };
    change(cam);
    scene.camera = { ...cam, position: tidy(cam.position), look_at: tidy(cam.look_at) };
    showView();
    scheduleView();
  }
  const orbit = (dx, dy) => moveCamera((cam) => {
    let offset = rotate(vec.sub(cam.position, cam.look_at), cam.up, -dx * 0.008);
    const right = vec.cross(cam.up, offset);
    const tilted = rotate(offset, right, dy * 0.008);
    // Never over the pole: up would be parallel to the view, which the scene refuses.
    if (Math.abs(vec.dot(vec.unit(tilted), vec.unit(cam.up))) < 0.995) offset = tilted;
    cam.position = vec.add(cam.look_at, offset);
  });
  const dolly = (factor) => moveCamera((cam) => {
    const offset = vec.sub(cam.position, cam.look_at);
    if (Math.hypot(...offset) * factor > 1e-4) cam.position = vec.add(cam.look_at, vec.scale(offset, factor));
  });
  const slide = (dx, dy, forwardAmount) => moveCamera((cam) => {
    const offset = vec.sub(cam.look_at, cam.position);
    const distance = Math.hypot(...offset);
    const forward = vec.unit(offset);
    const right = vec.unit(vec.cross(cam.up, forward));
    const up = vec.cross(forward, right);
    const step = distance * 0.002;
    const shift = vec.add(vec.add(vec.scale(right, -dx * step), vec.scale(up, dy * step)),
      vec.scale(forward, forwardAmount * distance));
    cam.position = vec.add(cam.position, shift);
    cam.look_at = vec.add(cam.look_at, shift);
  });

  let viewAbort = null;
  let viewScheduled = false;
  function scheduleView() {
    if (viewScheduled) return;
    viewScheduled = true;
    requestAnimationFrame(() => {
      viewScheduled = false;
      renderView();
    });
  }
  // Coarse first, then full; a newer camera aborts both, and the server drops the request
  // if it has not started it.
  async function renderView() {
    if (viewAbort) viewAbort.abort();
    const abort = (viewAbort = new AbortController());
    const box = $("view3d").getBoundingClientRect();
    const [w, h] = resolution();
    const width = Math.max(16, Math.min(640, Math.round(box.width)));
    const height = Math.max(9, Math.round((width * h) / w));
    const query = encodeURIComponent(JSON.stringify(withoutView(scene)));
    for (const level of ["coarse", "full"]) {
      try {
        const answer = await fetch(`/view.png?level=${level}&w=${width}&h=${height}&scene=${query}`,
          { signal: abort.signal });
        if (!answer.ok) {
          message(`view: ${await answer.text()}`);
          return;
        }
        const blob = await answer.blob();
        if (abort.signal.aborted) return;
        const image = $("view3d-image");
        const old = image.src;
        image.src = URL.createObjectURL(blob);
        image.dataset.level = level;
        if (old.startsWith("blob:")) URL.revokeObjectURL(old);
      } catch (error) {
        if (error.name === "AbortError") return;
        throw error;
      }
    }
  }

  const stage = $("view3d");
  let drag = null;
  stage.addEventListener("pointerdown", (event) => {
    drag = { x: event.clientX, y: event.clientY, shift: event.shiftKey };
    stage.setPointerCapture(event.pointerId);
    stage.focus();
  });
  stage.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const dx = event.clientX - drag.x;
    const dy = event.clientY - drag.y;
    drag.x = event.clientX;
    drag.y = event.clientY;
    if (drag.shift) slide(dx, dy, 0);
    else orbit(dx, dy);
  });
  const endDrag = () => { drag = null; };
  stage.addEventListener("pointerup", endDrag);
  stage.addEventListener("pointercancel", endDrag);
  stage.addEventListener("wheel", (event) => {
    event.preventDefault();
    dolly(event.deltaY > 0 ? 1.1 : 1 / 1.1);
  }, { passive: false });
  stage.addEventListener("keydown", (event) => {
    const moves = { w: [0, 0, 0.05], s: [0, 0, -0.05], a: [40, 0, 0], d: [-40, 0, 0] };
    const move = moves[event.key.toLowerCase()];
    if (move) slide(...move);
  });

  // --- controls -------------------------------------------------------------------------

  const fill = (select, names) => {
    select.innerHTML = names.map((n) => `<option>${n}</option>`).join("");
  };
  fill($("fractal"), info.fractals);
  fill($("palette"), info.palettes);

  // Each control: the scene field it sets, whether this fractal has it, how to read it.
  const integer = (id) => () => Math.round(Number($(id).value));
  const number = (id) => () => Number($(id).value);
  const text = (id) => () => $(id).value;
  const CONTROLS = [
    { id: "palette", field: "palette", read: text("palette") },
    { id: "max_iter", field: "max_iter", read: integer("max_iter") },
    { id: "supersample", field: "supersample", read: integer("supersample") },
    { id: "precision", field: "precision", read: text("precision") },
    { id: "power", field: "power", read: integer("power"), when: () => !isThreeD() },
    { id: "bulb_power", field: "power", read: number("bulb_power"), when: isThreeD },
    { id: "box_scale", field: "scale", read: number("box_scale") },
    { id: "iterations", field: "iterations", read: integer("iterations") },
    { id: "max_steps", field: "max_steps", read: integer("max_steps") },
  ];
  const applies = (control) => has(control.field) && (!control.when || control.when());

  function writeControls() {
    $("fractal").value = scene.fractal;
    // A loaded scene may leave fields out: the controls show the defaults it gets.
    const value = (field) => scene[field] ?? info.defaults[scene.fractal][field];
    for (const control of CONTROLS) {
      if (applies(control)) $(control.id).value = value(control.field);
    }
    if (has("c")) {
      $("c_re").value = value("c")[0];
      $("c_im").value = value("c")[1];
    }
    for (const el of document.querySelectorAll(".julia-only")) el.hidden = !has("c");
    for (const el of document.querySelectorAll(".power-only")) el.hidden = !(has("power") && !isThreeD());
    for (const el of document.querySelectorAll(".bulb-only")) el.hidden = scene.fractal !== "mandelbulb";
    for (const el of document.querySelectorAll(".box-only")) el.hidden = scene.fractal !== "mandelbox";
    $("max_iter").closest("label").hidden = !has("max_iter");
    document.body.classList.toggle("three-d", isThreeD());
  }

  function readControls() {
    for (const control of CONTROLS) {
      if (applies(control)) scene[control.field] = control.read();
    }
    if (has("c")) scene.c = [Number($("c_re").value), Number($("c_im").value)];
  }

  // The scene a poster renders, and "save scene" writes: the person's fields and the view.
  function currentScene() {
    const out = { ...scene, resolution: resolution() };
    if (!isThreeD()) Object.assign(out, currentView());
    return out;
  }

  async function checkScene(body) {
    const answer = await fetch("/api/scene/check", {
      method: "POST", headers: { "Content-Type": "application/json" }, body,
    });
    return answer.ok ? null : await answer.text();
  }

  function refresh() {
    writeControls();
    showView();
    if (isThreeD()) {
      map.invalidateSize();
      scheduleView();
    } else {
      map.invalidateSize();
      redrawTiles();
    }
  }

  async function controlsChanged() {
    const before = { ...scene };
    readControls();
    const problem = await checkScene(JSON.stringify(currentScene()));
    if (problem) {
      scene = before;
      writeControls();
      message(problem);
      return;
    }
    message("");
    refresh();
  }
  for (const id of ["palette", "max_iter", "supersample", "precision", "c_re", "c_im", "power",
    "bulb_power", "box_scale", "iterations", "max_steps"]) {
    $(id).addEventListener("change", controlsChanged);
  }
  for (const id of ["res-w", "res-h"]) $(id).addEventListener("change", showView);

  function selectFractal(name) {
    const keep = { palette: scene.palette, supersample: scene.supersample, precision: scene.precision };
    const defaults = info.defaults[name];
    scene = { ...structuredClone(withoutView(defaults)), ...(scene.fractal ? keep : {}) };
    loadedView = null;
    writeControls();
    if (!isThreeD()) {
      map.invalidateSize();
      setView(defaults.center, defaults.width);
    }
    refresh();
  }
  $("fractal").addEventListener("change", () => selectFractal($("fractal").value));

  // --- save, load, render ---------------------------------------------------------------

  async function saveScene() {
    const current = currentScene();
    const body = JSON.stringify(current, null, 2);
    const problem = await checkScene(body);
    if (problem) {
      message(problem);
      return;
    }
    $("scene-json").value = body;
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([body + "\n"], { type: "application/json" }));
    link.download = `${current.fractal}-scene.json`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }

  async function loadScene(body) {
    let loaded;
    try {
      loaded = JSON.parse(body);
    } catch (error) {
      message(`load scene: not JSON: ${error.message}`);
      return false;
    }
    const problem = await checkScene(body);
    if (problem) {
      message(`load scene: ${problem}`);
      return false;
    }
    message("");
    const defaults = info.defaults[loaded.fractal];
    scene = withoutView(loaded);
    const res = loaded.resolution;
    $("res-w").value = res[0];
    $("res-h").value = res[1];
    $("scene-json").value = body;
    writeControls();
    if (!isThreeD()) {
      map.invalidateSize();
      const view = { center: loaded.center ?? defaults.center, width: loaded.width ?? defaults.width };
      setView(view.center, view.width);
      loadedView = view;
    }
    refresh();
    return true;
  }

  async function startRender() {
    const body = JSON.stringify(currentScene());
    const download = $("render-download");
    download.hidden = true;
    $("render-status").textContent = "starting…";
    const answer = await fetch("/api/render", {
      method: "POST", headers: { "Content-Type": "application/json" }, body,
    });
    if (!answer.ok) {
      $("render-status").textContent = "";
      message(`render: ${await answer.text()}`);
      return;
    }
    let job = await answer.json();
    const progress = $("render-progress");
    while (job.state === "queued" || job.state === "rendering") {
      progress.max = Math.max(1, job.bands_total);
      progress.value = job.bands_done;
      $("render-status").textContent = job.state === "queued"
        ? "waiting for the render before it"
        : `rendering: ${job.bands_done} of ${job.bands_total || "?"} bands verified`;
      await new Promise((resolve) => setTimeout(resolve, 250));
      job = await (await fetch(`/api/render/${job.id}`)).json();
    }
    if (job.state === "done") {
      progress.value = progress.max = Math.max(1, job.bands_total);
      $("render-status").textContent = `done: ${job.bands_total} bands in ${job.seconds} s`;
      download.href = job.download;
      download.download = "";
      download.textContent = `download ${scene.fractal} ${resolution().join("x")}`;
      download.hidden = false;
    } else {
      $("render-status").textContent = "failed";
      message(`render: ${job.error}`);
    }
    return job;
  }

  $("save-scene").addEventListener("click", saveScene);
  $("load-scene").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (file) await loadScene(await file.text());
    event.target.value = "";
  });
  $("apply-json").addEventListener("click", () => loadScene($("scene-json").value));
  $("render").addEventListener("click", startRender);

  selectFractal("mandelbrot");
  // For people poking in the console, and for the browser tests.
  window.explorer = { map, layers, info, currentScene, loadScene, startRender, ready: true };
})().catch((error) => {
  document.getElementById("message").textContent = `the page failed to start: ${error}`;
  throw error;
});
