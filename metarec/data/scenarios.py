"""The evaluation scenarios of a cold-start split: which users meet which items.

Every scenario pairs a user population with an item population (MeLU's protocol):

- ``warm``: training users x existing items (as in MeLU, training-set performance)
- ``user_cold``: new users x existing items
- ``item_cold``: training users x new items
- ``user_item_cold``: new users x new items

Validation episodes (``val``) are users held out of training x existing items: new users to the model,
so they are logged under the ``user_cold`` scenario (:data:`VAL_SCENARIO`, ``val/user_cold/...``). This table is the one place that says which scenarios have
new users or new items; the split and the evaluation negatives follow it.
"""

from __future__ import annotations

from dataclasses import dataclass

WARM = "warm"
USER_COLD = "user_cold"
ITEM_COLD = "item_cold"
USER_ITEM_COLD = "user_item_cold"
VAL = "val"  # the validation episodes (not a test scenario)
VAL_SCENARIO = USER_COLD  # the scenario validation is logged as: val/user_cold/...


@dataclass(frozen=True)
class Scenario:
    name: str
    new_users: bool  # the users are new (never trained on), else training users
    new_items: bool  # the items are new (no training interactions), else existing items


# In this order everywhere (config default, reports, the split's random streams): never reorder.
SCENARIO_TABLE = (
    Scenario(WARM, new_users=False, new_items=False),
    Scenario(USER_COLD, new_users=True, new_items=False),
    Scenario(ITEM_COLD, new_users=False, new_items=True),
    Scenario(USER_ITEM_COLD, new_users=True, new_items=True),
)
SCENARIOS = tuple(s.name for s in SCENARIO_TABLE)
_BY_NAME = {s.name: s for s in SCENARIO_TABLE}


def new_items(scenario: str) -> bool:
    """True when ``scenario``'s items are new items (item-cold); False for any other name (``val``,
    training stages)."""
    s = _BY_NAME.get(scenario)
    return s is not None and s.new_items


def new_users(scenario: str) -> bool:
    """True when ``scenario``'s users are new users (user-cold); False for any other name."""
    s = _BY_NAME.get(scenario)
    return s is not None and s.new_users
