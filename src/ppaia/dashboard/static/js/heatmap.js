/* ppaia dashboard: a peer × partner matrix (learned trust) as a heat-map on a canvas, one pixel per
   block of peers (the server sends at most 200 × 200 block means as bytes: 0–254 a value, 255 none). */
(function (ppaia) {
  "use strict";
  // viridis, a few stops
  const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const NONE = [236, 239, 241];

  /** RGBA of every byte value, packed as the canvas's 32-bit pixels (little-endian: ABGR). */
  const PALETTE = (() => {
    const palette = new Uint32Array(256);
    for (let byte = 0; byte < 256; byte += 1) {
      let rgb = NONE;
      if (byte !== 255) {
        const t = (byte / 254) * (STOPS.length - 1);
        const k = Math.min(Math.floor(t), STOPS.length - 2);
        rgb = STOPS[k].map((c, i) => Math.round(c + (t - k) * (STOPS[k + 1][i] - c)));
      }
      palette[byte] = (255 << 24) | (rgb[2] << 16) | (rgb[1] << 8) | rgb[0];
    }
    return palette;
  })();

  function decode(data) {
    const text = atob(data);
    const bytes = new Uint8Array(text.length);
    for (let k = 0; k < text.length; k += 1) bytes[k] = text.charCodeAt(k);
    return bytes;
  }

  /** Draw `heat` (or clear the canvas for null); `caption` gets what it shows, and the value under
      the pointer as it moves. */
  function draw(canvas, heat, caption) {
    const context = canvas.getContext("2d");
    canvas.hidden = !heat;
    if (!heat) {
      canvas.width = canvas.height = 1;
      context.clearRect(0, 0, 1, 1);
      canvas.onmousemove = null;
      ppaia.dom.setText(caption, "no peer × partner matrix in this run (learned trust has one)");
      return;
    }
    const n = heat.blocks;
    const cells = decode(heat.data);
    canvas.width = canvas.height = n;
    const image = context.createImageData(n, n);
    const pixels = new Uint32Array(image.data.buffer);
    for (let k = 0; k < n * n; k += 1) pixels[k] = PALETTE[cells[k]];
    context.putImageData(image, 0, 0);
    const block = heat.size / n;
    const what = `${heat.name} after round ${heat.round}: row = peer, column = partner, ` +
      `${ppaia.dom.number(heat.low, 3)} (dark) to ${ppaia.dom.number(heat.high, 3)} (bright), grey: never met` +
      (n < heat.size ? `; a cell is the mean over a block of about ${Math.round(block)} × ${Math.round(block)} peers` : "");
    ppaia.dom.setText(caption, what);
    canvas.onmousemove = (event) => {
      const box = canvas.getBoundingClientRect();
      const i = Math.min(n - 1, Math.floor(((event.clientY - box.top) / box.height) * n));
      const j = Math.min(n - 1, Math.floor(((event.clientX - box.left) / box.width) * n));
      const byte = cells[i * n + j];
      const value = byte === 255 ? "none" : ppaia.dom.number(heat.low + (byte / 254) * (heat.high - heat.low), 3);
      const peers = (k) => (n === heat.size ? `${k}` : `${Math.floor(k * block)}–${Math.ceil((k + 1) * block) - 1}`);
      ppaia.dom.setText(caption, `peer ${peers(i)} → partner ${peers(j)}: ${value}`);
    };
    canvas.onmouseleave = () => ppaia.dom.setText(caption, what);
  }

  ppaia.heatmap = { draw };
})(window.ppaia = window.ppaia || {});
