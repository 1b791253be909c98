"""The HTML of `report.html`'s image parts: figures with a µm scale bar, the colour bar with its
reading, and the evidence section (per-entity support table, maps, zoomed top regions).

Every piece of text goes through html.escape; images come as `src` strings from the caller's
`place(image, file_name)` (a file next to report.html or a data: URI).
"""
from __future__ import annotations

import html
from typing import Callable, Mapping, Optional

from pathreasoner_jax.eval.evidence import Region
from pathreasoner_jax.eval.report_images import CROP_PX, EntityEvidence, ScaleBar, image_size, scale_bar

Place = Callable[[object, str], str]  # (ImageLike, default file name) → src
esc = html.escape


def entity_slug(name: str) -> str:
    """A file- and anchor-safe name for an entity: "Lung adenocarcinoma" → "lung-adenocarcinoma"."""
    import re

    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "entity"


def signed(x: float) -> str:
    """"+0.412" / "−0.050" / "0.000": the sign always shown, a real minus sign."""
    return "0.000" if abs(x) < 5e-4 else (f"+{x:.3f}" if x > 0 else f"\u2212{-x:.3f}")


def scaled_figure(src: str, alt: str, caption: str, bar: Optional[ScaleBar], width_px: int,
                  fig_id: str = "") -> str:
    """<figure> with the image at `width_px` CSS px and, when the scale is known, a bar whose
    width is a percentage of the image's: it stays true at any zoom of the page."""
    bar_html = ""
    if bar is not None:
        bar_html = (f'<div class="scalebar" style="width:{100 * bar.fraction:.4f}%" data-um="{bar.um:g}" '
                    f'data-px="{bar.px:.4f}"><span>{esc(bar.label)}</span></div>')
    ident = f' id="{esc(fig_id)}"' if fig_id else ""
    return (f'<figure{ident}><div class="scaled" style="width:{width_px}px"><img src="{esc(src)}" '
            f'alt="{esc(alt)}">{bar_html}</div><figcaption>{caption}</figcaption></figure>')


def scale_note(mpp: Optional[float]) -> str:
    """The page's sentence on the scale: the µm/pixel used, or why there is no bar."""
    if mpp:
        return f'<p class="note">Scale bars use the slide\'s {mpp:g} µm per level-0 pixel.</p>'
    return ('<p class="note warn-text" id="no-scale">Scale unknown: the slide metadata give no µm per pixel '
            '(mpp), so no scale bar is drawn.</p>')


def colorbar_html(src: str, vmax: float) -> str:
    """The colour bar image with its labels: −vmax (against) … 0 … +vmax (supports), in nats."""
    return (f'<div class="colorbar"><img src="{esc(src)}" alt="colour bar: blue = against, grey = 0, '
            f'red = supports"><div class="cb-labels"><span>{signed(-vmax)} against</span><span>0</span>'
            f'<span>{signed(vmax)} supports</span></div><div class="cb-unit">Δ log-likelihood (nats)</div></div>')


def support_sentence(name: str, ev: EntityEvidence) -> str:
    """How to read this map; says outright when it shows no positive support."""
    if ev.n_supporting == 0:
        against = " Some regions speak against it (blue)." if ev.against < 0 else ""
        return (f'<p class="warn-text no-support">This map shows no positive support for {esc(name)}: hiding '
                f"any region does not lower the model's likelihood of it.{against}</p>")
    return (f"<p>Red regions support {esc(name)} (hiding them lowers the model's likelihood of it), "
            f"blue regions speak against it; {ev.n_supporting} of {len(ev.drops)} regions support it.</p>")


def support_table(evidence: Mapping[str, EntityEvidence]) -> str:
    rows = "".join(
        f'<tr><th><a href="#ev-{entity_slug(n)}">{esc(n)}</a></th><td class="num">{signed(ev.support)}</td>'
        f'<td class="num">{signed(ev.against)}</td><td class="num">{ev.n_supporting} / {len(ev.drops)}</td>'
        f'<td class="num">{signed(ev.regions[0].drop) if ev.regions else "–"}</td></tr>'
        for n, ev in evidence.items())
    return ('<table class="support"><tr><th>entity</th><th>support Σ Δ&gt;0</th><th>against Σ Δ&lt;0</th>'
            f"<th>supporting regions</th><th>strongest Δ</th></tr>{rows}</table>")


def _crop_caption(r: Region, source: str) -> str:
    return (f"#{r.rank} · cluster {r.cluster} · Δ = {signed(r.drop)} nats ({100 * r.share:.0f}% of the support)"
            f"<br>level 0: x = {r.x}, y = {r.y}, {r.w} × {r.h} px; outlined patch at ({r.patch_x}, {r.patch_y})"
            f"<br>{'read from the slide' if source == 'slide' else 'enlarged from the thumbnail'}")


def regions_html(name: str, ev: EntityEvidence, place: Place, mpp: Optional[float]) -> str:
    """The zoomed crops of the top regions (or their coordinates only, without a slide image)."""
    if not ev.regions:
        return ""
    slug = entity_slug(name)
    if ev.crop_source:
        figs = []
        for r in ev.regions:
            src = place(r.crop, f"region_{slug}_{r.rank}.png")
            bar = scale_bar(mpp, r.w / image_size(r.crop)[0], image_size(r.crop)[0], target=0.3)
            figs.append(scaled_figure(src, f"{name}: region {r.rank}", _crop_caption(r, ev.crop_source), bar,
                                      CROP_PX).replace("<figure>", '<figure class="crop">', 1))
        return f'<div class="crops">{"".join(figs)}</div>'
    rows = "".join(f"<li>#{r.rank} cluster {r.cluster}: Δ = {signed(r.drop)} nats at level-0 x = {r.x}, "
                   f"y = {r.y} ({r.w} × {r.h} px)</li>" for r in ev.regions)
    return f"<p>No slide image to crop; top regions:</p><ul>{rows}</ul>"


def evidence_section(evidence: Mapping[str, EntityEvidence], place: Place, colorbar_src: str,
                     mpp: Optional[float], downsample: float) -> list[str]:
    """h2 "Evidence maps": how to read them, the per-entity support table, then each map with
    its colour bar, its reading and its numbered top regions."""
    out = ['<h2>Evidence maps</h2><p>Each map shows, per region (pseudo-bag cluster), how much the model\'s '
           "log-likelihood of the entity drops when that region is hidden (Δ, in nats). Colours are a "
           "diverging map centred at 0: <span class=\"pos\">red (Δ &gt; 0) = the region supports the entity "
           'as the model states it in its answer</span>, <span class="neg">blue (Δ &lt; 0) = the region speaks '
           'against it</span>, no tint = no effect; opacity grows with |Δ|, so '
           "the tissue stays visible where the evidence is weak. Numbered boxes are the top regions, "
           "zoomed below each map.</p>", support_table(evidence)]
    for name, ev in evidence.items():
        slug = entity_slug(name)
        src = place(ev.overlay, f"evidence_{slug}.png")
        width = image_size(ev.overlay)[0]
        out.append(f'<section class="entity-ev" id="ev-{slug}"><h3>{esc(name)}</h3>')
        out.append(scaled_figure(src, f"evidence map: {name}", f"Evidence for {esc(name)} (colour scale "
                                 f"±{ev.vmax:.3f} nats)", scale_bar(mpp, downsample, width), 480))
        out += [colorbar_html(colorbar_src, ev.vmax), support_sentence(name, ev),
                regions_html(name, ev, place, mpp), "</section>"]
    return out
