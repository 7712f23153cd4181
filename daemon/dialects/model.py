"""Which model a request goes to, decided the same way for every dialect.

`--model` / DARIO_MODEL ("send every request to this model") comes first and replaces whatever
the client named; the name that results is then looked up in the alias table. A dialect decides
only what an unknown name means: Anthropic passes it through for the upstream to judge, OpenAI
answers 404 `model_not_found` as OpenAI's API does.
"""

from __future__ import annotations

from dario.daemon.routing.models import ModelTable


def model_to_ask(requested: str, force_model: str | None) -> str:
    """The model name a request asks for once the operator's forced model is applied."""
    return force_model or requested


def resolve_model(requested: str, models: ModelTable, force_model: str | None) -> str | None:
    """Forced model first, then aliases → a Claude id; None for a name the table does not know."""
    return models.resolve(model_to_ask(requested, force_model))
