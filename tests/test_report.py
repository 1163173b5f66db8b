"""Rhythm analysis, the HTML page and the plots on a tiny model."""

import math

from attnrl.credit.config import CreditConfig
from attnrl.report import analyze_response, plot_reward_curve, plot_rhythm, rhythm_html
from attnrl.utils.tiny import tiny_causal_lm, tiny_tokenizer


def test_rhythm_analysis_page_and_plots(tmp_path):
    model, tok = tiny_causal_lm("llama").eval(), tiny_tokenizer()
    cfg = CreditConfig(credit_window=3, credit_fai_lo=1, credit_fai_hi=5)
    completion = "12 + 30 = 42, so the answer is 42."
    a = analyze_response(model, tok, [{"role": "user", "content": "What is 12 + 30?"}], completion, cfg)
    n = len(completion)  # character tokenizer: one token per character
    assert len(a.tokens) == len(a.waad) == len(a.fai) == len(a.gamma) == n
    assert "".join(a.tokens) == completion
    assert sum(a.anchor) == math.ceil(0.4 * n) and sum(a.preplan) == math.ceil(0.4 * n)
    assert math.isnan(a.fai[-1]) and all(w >= 0 for w in a.waad)
    assert len(a.head_distances) == len(a.layers) == 2
    page = rhythm_html(a, title="t")
    assert page.count('class="tok"') == n + 4 and 'data-role="anchor"' in page
    plot_rhythm(a, tmp_path / "r.png")
    plot_reward_curve([{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.5}], tmp_path / "c.png")
    assert (tmp_path / "r.png").stat().st_size > 5000 and (tmp_path / "c.png").stat().st_size > 5000
