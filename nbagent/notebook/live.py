"""The small anywidgets of the live views: a scroll-keeping HTML list, and the rule that hides static fallbacks.

Each live view also publishes a static rendering (:mod:`nbagent.notebook.static`) for frontends without a
widget manager (nbconvert, GitHub). A frontend that draws the widget must not show both: every ESM here adds,
once per page, a style rule that hides the static outputs (``.nbagent-summary``, ``.nbagent-compact-static``)
of an output area holding a drawn nbagent widget (``.nbagent-live``). Where no widget is drawn, nothing
matches and the static HTML shows. The rule is CSS only (``:has``), so an update of the static output later
is hidden too.
"""

from __future__ import annotations

import anywidget
import traitlets

__all__ = ["HIDE_STATIC_JS", "ScrollList"]

#: JavaScript that installs the rule hiding the static fallbacks next to a drawn nbagent widget (once a page).
HIDE_STATIC_JS = r"""
const STATIC = ".nbagent-summary, .nbagent-compact-static";
function hideStatic() {
  if (document.getElementById("nbagent-hide-static")) return;
  const style = document.createElement("style");
  style.id = "nbagent-hide-static";
  style.textContent =
    `.jp-OutputArea:has(.nbagent-live) .jp-OutputArea-child:has(${STATIC}):not(:has(.nbagent-live)),` +
    `.output:has(.nbagent-live) .output_area:has(${STATIC}):not(:has(.nbagent-live)) {display: none}`;
  document.head.appendChild(style);
}
"""

_SCROLL_ESM = HIDE_STATIC_JS + r"""
function render({ model, el }) {
  hideStatic();
  el.classList.add("nbagent-live");
  const head = document.createElement("div");
  el.appendChild(head);
  const box = document.createElement("div");
  box.className = "nbagent-scroll";
  box.style.cssText = "overflow:auto;max-height:" + model.get("max_height");
  el.appendChild(box);
  let follow = true;  // at the bottom: follow what is added; scrolled up: stay where the user is
  box.addEventListener("scroll", () => {
    follow = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  });
  const draw = () => {
    head.innerHTML = model.get("head");
    const top = box.scrollTop;
    box.innerHTML = model.get("value");
    box.scrollTop = follow ? box.scrollHeight : top;
  };
  // drawn before the box is on the page (no height yet) or shown again later: go to the bottom once it has one
  const sized = new ResizeObserver(() => { if (follow) box.scrollTop = box.scrollHeight; });
  sized.observe(box);
  model.on("change:value change:head", draw);
  draw();
  return () => { model.off("change:value change:head", draw); sized.disconnect(); };
}
export default { render };
"""


class ScrollList(anywidget.AnyWidget):  # type: ignore[misc]
    """HTML in a box of at most ``max_height`` that keeps its scroll position across redraws.

    At the bottom, the box follows new content; scrolled up, it stays where the user put it. ``value`` is the
    HTML (escaped by whoever builds it), like ``ipywidgets.HTML``; ``head`` is HTML shown above the box.
    """

    _esm = _SCROLL_ESM
    value = traitlets.Unicode("").tag(sync=True)
    head = traitlets.Unicode("").tag(sync=True)
    max_height = traitlets.Unicode("18em").tag(sync=True)
