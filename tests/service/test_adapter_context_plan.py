"""Which context an answer's path gives the model (`context_plan`), without an app: the trained
one for an adapter with a record, none for one trained without context, the policy's for an
adapter without a record, for the rag path, and whenever the policy says `adapter_context:
"policy"`."""

from __future__ import annotations

from adapters.catalog import ServedAdapter
from adapters.training_record import Trained, TrainedContext, trained_from
from service.path_router import ContextPlan, context_plan
from service.policy import Policy

POLICY = Policy(top_k=2, min_score=0.4, context_max_tokens=500)
TRAINED = Trained(TrainedContext(top_k=4, min_score=0.1, context_max_tokens=900))


def adapter(trained: Trained | None) -> ServedAdapter:
    return ServedAdapter("acme", "skerry", 1, "acme--skerry--v1", "/x", trained=trained)


def test_the_trained_context_unless_the_policy_says_otherwise():
    assert context_plan(POLICY, adapter(TRAINED)) == ContextPlan("adapter", 4, 0.1, 900)
    overridden = POLICY.model_copy(update={"adapter_context": "policy"})
    assert context_plan(overridden, adapter(TRAINED)) == ContextPlan("policy", 2, 0.4, 500)


def test_trained_without_context_gets_none_unless_the_policy_says_otherwise():
    assert context_plan(POLICY, adapter(Trained(None))).source == "none"
    overridden = POLICY.model_copy(update={"adapter_context": "policy"})
    assert context_plan(overridden, adapter(Trained(None))).source == "policy"


def test_no_record_and_no_adapter_get_the_policys():
    assert context_plan(POLICY, adapter(None)) == ContextPlan("policy", 2, 0.4, 500)
    assert context_plan(POLICY, None) == ContextPlan("policy", 2, 0.4, 500)


def test_the_routing_view_of_a_stored_record():
    assert trained_from(None) is None
    assert trained_from({"format": 1, "context": None}) == Trained(None)
    stored = {"format": 1, "context": {"top_k": 4, "min_score": 0.1, "context_max_tokens": 900,
                                       "share": 0.5, "oracle_free_share": 0.2}}
    assert trained_from(stored) == TRAINED


def test_the_policy_default_is_trained():
    assert Policy().adapter_context == "trained"
