"""Labs 00-03: the mistakes a learner is likely to make, each named, and the check that rejects it.

Every entry is a known-wrong answer declared in the lab's ``wrong=`` (so ``minilm release`` also
checks it on several seeds); here each is asserted to lose points on its question, and those the
in-notebook check can see (public inputs) are asserted to be caught there already, before grading.
Also: the opt-in ``pure=True`` check that rejects a function which changes its inputs in place.
"""

import re
import warnings

import numpy as np
import pytest
import torch

from minilm.grading.checker import plan_checks, probe_request, score_question
from minilm.grading.grader import grade_objects, reference_namespace
from minilm.grading.probe import probe_question
from minilm.grading.questions import Hidden, function_question
from minilm.labs import get_lab, lab00, lab01, lab02, lab03

# (lab, question, the mistake, where it is caught: "public" = the in-notebook check already fails)
MISTAKES = [
    ("00", "q1", lab00._ppl_sum, "public"),                      # probability of the text, not per token
    ("00", "q1", lab00._ppl_base2, "public"),                    # natural log read as log2
    ("00", "q1", lab00._ppl_mean_inverse, "public"),             # arithmetic mean of 1/p
    ("00", "q1", lab00._ppl_product, "hidden"),                  # product of probabilities underflows
    ("00", "q1", lab00._ppl_no_minus, "public"),                 # sign dropped
    ("00", "q1", lab00._ppl_negates_in_place, "public"),         # mutates the caller's array
    ("00", "q2", lab00._bigram_transposed, "public"),            # wrong axis: P[next, prev]
    ("00", "q2", lab00._bigram_columns_normalised, "public"),    # wrong axis: columns sum to one
    ("00", "q2", lab00._bigram_joint, "public"),                 # P(a, b) instead of P(b | a)
    ("00", "q2", lab00._bigram_ignores_k, "public"),
    ("00", "q2", lab00._bigram_k_not_kv, "public"),              # add-k denominator without V
    ("00", "q2", lab00._bigram_unseen_zero, "public"),           # unseen context: a zero row
    ("00", "q3", lab00._rate_uniform_average, "public"),         # ignores the stationary distribution
    ("00", "q3", lab00._rate_stationary_entropy, "public"),      # H(pi), the unigram entropy
    ("00", "q3", lab00._rate_bits, "public"),                    # log2 instead of natural log
    ("00", "q3", lab00._rate_naive_log, "hidden"),               # 0 log 0 = nan
    ("00", "q3", lab00._rate_column_entropies, "public"),        # wrong axis
    ("00", "q6", lab00._final_loss_winner, "public"),            # ignores compute
    ("00", "q6", lab00._cheapest_winner, "public"),
    ("00", "q6", lab00._ratio_winner, "public"),
    ("01", "q1", lab01._loss_no_E, "public"),
    ("01", "q1", lab01._loss_swapped, "public"),                 # exponents on the wrong terms
    ("01", "q1", lab01._loss_log10, "public"),
    ("01", "q1", lab01._loss_positive_exponents, "public"),      # N^alpha instead of N^-alpha
    ("01", "q2", lab01._alloc_no_six, "public"),                 # C = N D
    ("01", "q2", lab01._alloc_d_without_six, "public"),          # D = C / N: spends 6 C
    ("01", "q2", lab01._alloc_swapped, "public"),
    ("01", "q2", lab01._alloc_twenty, "public"),                 # D = 20 N whatever the law
    ("01", "q2", lab01._alloc_exponents_swapped, "public"),
    ("01", "q5", lab01._fit_mean_scipy_tolerance, "public"),
    ("01", "q5", lab01._fit_least_squares, "public"),
    ("02", "q1", lab02._mask_window_only, "public"),             # forgets the sinks
    ("02", "q1", lab02._mask_noncausal_sinks, "public"),
    ("02", "q1", lab02._mask_off_by_one, "public"),              # window + 1 keys
    ("02", "q1", lab02._mask_transposed, "public"),              # wrong axis: rows are keys
    ("02", "q2", lab02._la_no_denominator, "public"),
    ("02", "q2", lab02._la_noncausal, "public"),
    ("02", "q2", lab02._la_softmax, "public"),
    ("02", "q2", lab02._la_output_before_update, "public"),      # off by one position
    ("02", "q3", lab02._slope_endpoints, "hidden"),              # exact on the public power law
    ("02", "q3", lab02._slope_linear_space, "public"),
    ("02", "q3", lab02._slope_semilog, "public"),
    ("02", "q3", lab02._slope_axes_swapped, "public"),           # log n regressed on log t
    ("02", "q4", lab02._kv_keys_only, "public"),
    ("02", "q4", lab02._kv_ignores_batch, "hidden"),             # public cases have batch 1
    ("02", "q4", lab02._kv_ignores_dtype, "public"),
    ("03", "q1", lab03._two_over_lambda_min, "public"),
    ("03", "q1", lab03._one_over_lambda_max, "public"),
    ("03", "q1", lab03._two_over_max_diagonal, "public"),
    ("03", "q1", lab03._two_over_frobenius, "public"),
    ("03", "q2", lab03._max_diagonal, "public"),
    ("03", "q2", lab03._frobenius, "public"),
    ("03", "q2", lab03._one_rayleigh_step, "public"),
    ("03", "q2", lab03._power_unnormalised, "public"),
    ("03", "q2", lab03._power_too_few_iterations, "public"),
    ("03", "q4", lab03._adam_no_bias_correction, "public"),
    ("03", "q4", lab03._adam_eps_inside_sqrt, "hidden"),
    ("03", "q4", lab03._adam_old_moments, "public"),
    ("03", "q4", lab03._adam_in_place, "public"),                # mutates param, m and v
    ("03", "q4", lab03._adam_step_off_by_one, "public"),         # bias correction with t + 1
    ("03", "q5", lab03._equal_count_bins, "public"),
    ("03", "q5", lab03._rare_first_bins, "public"),
    ("03", "q5", lab03._mass_including_self, "public"),
    ("03", "q5", lab03._ties_larger_id_first, "public"),
    ("03", "q5", lab03._bins_in_id_order, "public"),             # never sorted by frequency
    ("03", "q6", lab03._bin_sum_not_mean, "public"),
    ("03", "q6", lab03._bin_by_prediction, "public"),
    ("03", "q6", lab03._empty_bin_zero, "hidden"),               # the public case has no empty bin
    ("03", "q6", lab03._bin_loss_bits, "public"),                # log2 instead of natural log
    ("03", "q6", lab03._bin_mean_over_all_tokens, "public"),
]


def _name(entry) -> str:
    lab, q, wrong, _ = entry
    return f"{lab}-{q}-{wrong.__name__}"


@pytest.fixture(scope="module")
def references():
    return {lab: reference_namespace(get_lab(lab)) for lab in ("00", "01", "02", "03")}


@pytest.mark.parametrize("entry", MISTAKES, ids=_name)
def test_each_likely_mistake_loses_points_where_the_table_says(entry, references):
    lab_id, qname, wrong, caught_by = entry
    lab = get_lab(lab_id)
    q = lab.question(qname)
    assert wrong in q.wrong, f"{wrong.__name__} must be declared in {qname}'s wrong= (the release gate checks it)"
    ns = {**references[lab_id], q.target: wrong}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the wrong answers overflow and divide by zero on purpose
        for seed in (0, 11):
            graded = grade_objects(lab, ns, seed=seed, questions=[qname]).questions[0]
            assert not graded.full, (seed, graded.score)
        public = grade_objects(lab, ns, public_only=True, questions=[qname]).questions[0]
    if caught_by == "public":
        assert not public.full, "the in-notebook check should already reject this mistake"
    else:
        assert public.full, "listed as caught only by hidden inputs: update the table"


def test_the_table_covers_every_function_questions_declared_mistakes():
    listed = {(lab, q, w) for lab, q, w, _ in MISTAKES}
    for lab_id in ("00", "01", "02", "03"):
        for q in get_lab(lab_id).questions:
            if q.kind == "function":
                for w in q.wrong:
                    assert (lab_id, q.name, w) in listed, f"lab {lab_id} {q.name}: {w.__name__} not in MISTAKES"


def test_in_place_adam_really_mutates_and_the_message_says_so(references):
    p, g, m, v = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.1]), torch.zeros(2), torch.zeros(2)
    before = [t.clone() for t in (p, m, v)]
    out = lab03._adam_in_place(p, g, m, v, 1, lr=0.1)
    ref = lab03.adam_step_ref(*before[:1], g, *before[1:], 1, lr=0.1)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)                # the returned numbers are right...
    assert not torch.equal(p, before[0])                 # ...but the caller's parameter changed
    graded = grade_objects(get_lab("03"), {"adam_step": lab03._adam_in_place}, public_only=True,
                           questions=["q4"]).questions[0]
    assert graded.score == 0
    assert all("in place" in c.message for c in graded.checks)


def _echo_question(pure: bool):
    def ref(x):
        return x * 2.0

    return function_question("q1", 1, target="f", reference=ref, public=[(np.array([1.0, 2.0]),)],
                             hidden=[Hidden(lambda rng: (rng.normal(size=3),), n=2)], wrong=[lambda x: x],
                             pure=pure)


def _doubles_in_place(x):
    x *= 2.0
    return x


@pytest.mark.parametrize("pure", [False, True])
def test_pure_is_opt_in_and_other_questions_are_graded_as_before(pure):
    q = _echo_question(pure)
    checks = plan_checks(q, seed=3)
    request = probe_request(q, checks)
    assert ("pure" in request) == pure                   # requests of other labs' questions are unchanged
    reply = probe_question(request, {"f": _doubles_in_place})
    result = score_question(q, checks, reply)
    assert result.full == (not pure)
    pure_reply = probe_question(request, {"f": lambda x: x * 2.0})  # a function that copies: full either way
    assert score_question(q, plan_checks(q, seed=3), pure_reply).full


def test_pure_check_rejects_a_missing_or_forged_report():
    q = _echo_question(True)
    checks = plan_checks(q, seed=3)
    reply = probe_question(probe_request(q, checks), {"f": lambda x: x * 2.0})
    for res in reply["results"]:
        del res["inputs_after"]
    assert score_question(q, checks, reply).score == 0
    with pytest.raises(ValueError, match="pure=True is for function questions"):
        from minilm.grading.questions import value_question

        value_question("q2", 1, target="x", answer=1, wrong=[2]).__class__(
            name="q2", points=1, kind="value", target="x", answer=1, wrong=(2,), pure=True)


_CODE_IN_HINT = re.compile(r"np\.\w|torch\.\w|\w\(reduction=|\[-1\]|<-|floor\(|polyfit|interp|entropy_rate\(\)")


@pytest.mark.parametrize("lab_id", ["00", "01", "02", "03"])
def test_hints_teach_without_stating_the_code(lab_id):
    for q in get_lab(lab_id).questions:
        assert q.hint, f"lab {lab_id} {q.name} has no hint"
        assert not _CODE_IN_HINT.search(q.hint), f"lab {lab_id} {q.name}: the hint spells out the code: {q.hint!r}"


def test_pure_check_works_through_the_sandboxed_notebook_grader(tmp_path):
    """The real path: the probe's source runs in the notebook's kernel and reports the inputs."""
    import nbformat

    from minilm.grading.grader import grade_notebook
    from minilm.grading.questions import Lab

    lab = Lab("98", "pure_demo", "Pure demo", [
        _echo_question(True),
        function_question("q2", 1, target="g", reference=lambda x: x * 2.0, public=[(np.array([1.0, 2.0]),)],
                          wrong=[lambda x: x]),  # not pure: the same in-place code keeps full marks
    ])
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import numpy as np\n\ndef f(x):\n    x *= 2.0\n    return x\n\ng = f")]
    path = tmp_path / "98_pure_demo.ipynb"
    nbformat.write(nb, path)
    result = grade_notebook(path, lab=lab, seed=5)
    assert result.status == "ok", result.message
    q1, q2 = result.questions
    assert q1.score == 0 and all("in place" in c.message for c in q1.checks), q1.checks
    assert q2.full


@pytest.mark.parametrize("mode", ["class", "self"])
def test_the_learner_is_told_the_in_place_update_is_the_problem(mode):
    from minilm.grading.selfcheck import self_check

    text = self_check(get_lab("03"), "q4", {"adam_step": lab03._adam_in_place}, mode=mode, seed=1).text
    assert "public input 1 (first step from zero moments): the result is right, but the call changed" in text
    if mode == "self":  # hidden checks give the coarse reason only, never numbers
        assert "hidden input 1 (random tensors, steps and hyper-parameters): changed its inputs in place" in text
    assert "Hint:" in text and "must not change" in text
