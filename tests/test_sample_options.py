"""`rlhfkit sample`: an option that would do nothing in its combination is refused, in one line, before any model
or scorer is loaded."""

import pytest

from rlhfkit.bestofn import SampleConfig, check_sample_config, sample_main
from rlhfkit.errors import RlhfkitError

MISSING = "/nonexistent/model"  # loading it would fail differently: the refusals come first


@pytest.mark.parametrize("flags, message", [
    (["--reward", "vader"], "--reward vader only picks among --best-of N samples, and --best-of is 1: pass "
                            "--best-of N (N >= 2) to keep the best of N, or drop --reward for plain samples"),
    (["--best-of", "4"], "--best-of needs --reward (rm:PATH, vader, module:function, hf:MODEL or openai:MODEL) to "
                         "pick the best"),
    (["--best-of", "0", "--reward", "vader"], "--best-of must be >= 1 (1: plain sampling), got 0"),
    (["--best-of", "4", "--reward", "rm:/nonexistent/rm", "--temperature", "0", "--num-samples", "1"],
     "--temperature 0 (greedy) draws the same completion every time, so --best-of 4 would pick among copies; "
     "use a temperature > 0"),
    (["--temperature", "0"], "--temperature 0 (greedy) draws the same completion every time, so --num-samples 4 "
                             "would write copies; use a temperature > 0, or --num-samples 1"),
    (["--num-samples", "0"], "--num-samples must be >= 1, got 0"),
    (["--min-new-tokens", "40", "--max-new-tokens", "32"],
     "--min-new-tokens 40 exceeds --max-new-tokens 32: no response can be that long"),
])
def test_options_that_do_nothing_together_are_refused_before_loading(tmp_path, flags, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "the movie"}\n')
    with pytest.raises(RlhfkitError) as err:
        sample_main(["--model", MISSING, "--prompts", str(prompts), "--out", str(tmp_path / "c.jsonl"), *flags])
    assert str(err.value) == message
    assert not (tmp_path / "c.jsonl").exists()


def test_the_combinations_that_work_pass_the_check():
    check_sample_config(SampleConfig(prompts="p.jsonl"))  # plain sampling
    check_sample_config(SampleConfig(prompts="p.jsonl", best_of=4, reward="vader"))
    check_sample_config(SampleConfig(prompts="p.jsonl", temperature=0.0, num_samples=1))  # one greedy answer
    with pytest.raises(RlhfkitError, match="--prompts is required"):
        check_sample_config(SampleConfig())
