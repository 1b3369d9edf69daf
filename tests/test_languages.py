"""Metrics for non-Latin text: evaluation.language picks sacrebleu's tokenizer and a ROUGE tokenizer that
keeps non-Latin words; identical texts score 1 and a mismatched language is warned about. No model."""

from __future__ import annotations

import logging

import pytest

from tunesweep.config import expand_sweep, load_config, parse_config
from tunesweep.errors import UserError
from tunesweep.evaluate.metrics import build_metric, language_warning, unicode_tokens

ZH = ["猫坐在垫子上，狗在花园里跑来跑去。", "今天天气很好，我们去公园散步吧。"]
JA = ["猫はマットの上に座っています。", "今日はとても良い天気ですね。"]
RU = ["Кошка сидит на коврике, а собака бегает по саду.", "Сегодня хорошая погода, пойдём гулять в парк."]
AR = ["القطة تجلس على السجادة والكلب يركض في الحديقة.", "الطقس جميل اليوم، لنذهب إلى الحديقة."]


def evaluation(language: str):
    return parse_config({"name": "x", "models": [{"name": "m", "base": "b"}],
                         "evaluation": {"language": language}}).evaluation


@pytest.mark.parametrize("language, texts", [("zh", ZH), ("ja", JA), ("intl", RU), ("intl", AR), ("other", ZH),
                                             ("other", RU), ("other", AR)])
def test_identical_non_latin_texts_score_one(language, texts):
    for name in ("bleu", "rougeL"):
        metric = build_metric(name, evaluation(language))
        assert metric.aggregate(metric.rows(texts, texts)) == pytest.approx(1.0), (name, language)


def test_english_tokenizers_score_non_latin_zero_and_say_so():
    """What `en` does with such text (the reason for the setting), and the warning that goes with it."""
    rouge = build_metric("rougeL", evaluation("en"))
    assert rouge.aggregate(rouge.rows(ZH + RU, ZH + RU)) == 0.0
    warning = language_warning(ZH + RU + AR, "en")
    assert warning.startswith("6 of 6 references are mostly non-Latin script") and "evaluation.language" in warning
    assert language_warning(["The cat sat on the mat.", "Paris is in France."] + RU[:1], "en") is None
    assert language_warning(ZH + JA + RU, "intl").startswith("4 of 6 references are mostly Chinese, Japanese")
    assert language_warning(ZH, "zh") is None


def test_tokenizers_and_settings_per_language():
    assert unicode_tokens("猫坐 Hello, Мир!", chars=True) == ["猫", "坐", "hello", "мир"]
    assert unicode_tokens("Hello, Мир!", chars=False) == ["hello", "мир"]
    assert build_metric("bleu", evaluation("zh")).signature().split("|")[3] == "tok:zh"
    assert "tok:13a" in build_metric("bleu", evaluation("en")).signature()
    assert "tok:intl" in build_metric("bleu", evaluation("intl")).signature()
    assert build_metric("rougeL", evaluation("en")).settings()["use_stemmer"] is True
    s = build_metric("rougeL", evaluation("zh")).settings()
    assert s["language"] == "zh" and s["use_stemmer"] is False and "Unicode words" in s["tokenizer"]
    with pytest.raises(UserError, match="evaluation.language = 'klingon'"):
        evaluation("klingon")


def test_score_warns_when_the_references_do_not_fit_the_language(tmp_path, caplog):
    from test_scoring import write_responses, write_study

    from tunesweep.evaluate.scoring import score

    cfg = load_config(write_study(tmp_path, metrics="[bleu, rougeL]", bootstrap=0))
    names = [dc.name for dc in expand_sweep(cfg.generation)]
    records = [{"instruction": f"q{i}", "input": "", "output": t} for i, t in enumerate(ZH + RU)]
    write_responses(cfg, "tiny", records, {n: [r["output"] for r in records] for n in names})
    with caplog.at_level(logging.WARNING):
        table = score(cfg)["targets"]["tiny"]["table"]
    assert "tiny: 4 of 4 references are mostly non-Latin script" in caplog.text
    assert table[0]["rougeL"] == 0.0
    text = cfg.path.parent.joinpath("study.yaml").read_text().replace("evaluation: {", "evaluation: {language: other, ")
    cfg.path.parent.joinpath("study.yaml").write_text(text)
    caplog.clear()
    table = score(load_config(cfg.path.parent / "study.yaml"))["targets"]["tiny"]["table"]
    assert [row["rougeL"] for row in table] == [1.0] * len(names)
    assert [row["bleu"] for row in table] == pytest.approx([1.0] * len(names))
    assert "references are mostly" not in caplog.text
