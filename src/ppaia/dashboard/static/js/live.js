/* ppaia dashboard: the live page. Views arrive as server-sent events (/api/events); the slider shows an
   earlier round of a run that keeps them (/api/view?round=R). window.ppaiaStats records how long each
   render took (performance.now), shown on the page. */
(function (ppaia) {
  "use strict";
  const page = ppaia.page.create(document);
  const slider = document.getElementById("slider");
  const follow = document.getElementById("follow");
  const connection = document.getElementById("connection");
  const timing = document.getElementById("render-time");
  const stats = (window.ppaiaStats = { renders: [], views: 0 });
  let newest = null;
  let asked = 0;

  function show(view) {
    const ms = ppaia.page.render(page, view);
    stats.renders.push(ms);
    stats.views += 1;
    stats.last = { round: view.round, ms };
    ppaia.dom.setText(timing, `last update drawn in ${ms.toFixed(0)} ms`);
  }

  function track(view) {
    slider.disabled = !view.replay;
    slider.min = String(view.first);
    slider.max = String(view.latest);
    if (follow.checked) slider.value = String(view.latest);
  }

  async function fetchView(round) {
    const ticket = ++asked;
    const response = await fetch("/api/view" + (round === null ? "" : `?round=${round}`));
    if (!response.ok || ticket !== asked) return;
    const view = await response.json();
    if (ticket === asked) show(view);
  }

  slider.addEventListener("input", () => {
    follow.checked = Number(slider.value) >= Number(slider.max);
    fetchView(Number(slider.value));
  });
  follow.addEventListener("change", () => {
    if (follow.checked && newest) {
      slider.value = slider.max;
      show(newest);
    }
  });

  const events = new EventSource("/api/events");
  events.addEventListener("view", (event) => {
    newest = JSON.parse(event.data);
    track(newest);
    if (follow.checked) show(newest);
  });
  events.addEventListener("open", () => {
    ppaia.dom.setText(connection, "connected");
    connection.className = "connection live";
  });
  events.addEventListener("error", () => {
    ppaia.dom.setText(connection, "disconnected (retrying)");
    connection.className = "connection lost";
  });
  window.addEventListener("resize", () => newest && follow.checked && show(newest));
})(window.ppaia = window.ppaia || {});
