/* ppaia dashboard: ledger events (releases, votes, scores), newest last, as text. */
(function (ppaia) {
  "use strict";
  function update(list, events) {
    if (!events.length) {
      list.replaceChildren(ppaia.dom.el("li", { class: "muted", text: "no ledger events in this run (FLoBC records releases)" }));
      return;
    }
    list.replaceChildren(...events.map((event) => ppaia.dom.el("li", { "data-round": event.round, text: `round ${event.round}: ${event.text}` })));
  }
  ppaia.ledger = { update };
})(window.ppaia = window.ppaia || {});
