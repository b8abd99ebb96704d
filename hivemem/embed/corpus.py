"""A deterministic corpus of realistic, distinct English sentences (8–30 words).

Used to verify an exported model variant against the reference (``model prepare``), by the
benchmarks and by the demo. Sentences are built from several clause shapes and a few hundred
content words so that nearest-neighbour structure is not dominated by one template.
"""

from __future__ import annotations

import random

_SUBJECTS = [
    "the support agent",
    "our billing service",
    "a new customer",
    "the research team",
    "my manager",
    "the nightly build",
    "a junior developer",
    "the hotel receptionist",
    "the delivery driver",
    "the hiring committee",
    "a frustrated user",
    "the school principal",
    "the mobile app",
    "the city council",
    "a small bakery",
    "the chemistry teacher",
    "the payment gateway",
    "the marketing intern",
    "an old friend",
    "the travel agency",
    "the data pipeline",
    "the museum guide",
    "our landlord",
    "the football coach",
    "the cloud provider",
    "the night nurse",
    "a curious child",
    "the legal department",
    "the recommendation model",
    "the weather station",
    "the family doctor",
    "the warehouse robot",
    "a local journalist",
]
_VERBS = [
    "cancelled",
    "rescheduled",
    "approved",
    "rejected",
    "forgot",
    "explained",
    "reported",
    "requested",
    "shipped",
    "repaired",
    "translated",
    "summarised",
    "booked",
    "refunded",
    "migrated",
    "reviewed",
    "ignored",
    "prioritised",
    "celebrated",
    "questioned",
    "documented",
    "delayed",
    "measured",
    "recommended",
    "replaced",
    "uploaded",
    "renewed",
    "debugged",
]
_OBJECTS = [
    "the quarterly report",
    "a flight to Lisbon",
    "the broken dishwasher",
    "two concert tickets",
    "the vegetarian menu",
    "the database migration",
    "a refund for the late order",
    "the annual budget",
    "the password reset email",
    "a dentist appointment",
    "the lease agreement",
    "the onboarding checklist",
    "the customer's allergy information",
    "the hiking trip",
    "the search index",
    "a birthday present for her sister",
    "the insurance claim",
    "the security patch",
    "the wedding playlist",
    "the conference talk",
    "a pull request",
    "the monthly newsletter",
    "the spare bedroom",
    "the train timetable",
    "the grant proposal",
    "the kitchen renovation",
    "the phone contract",
    "the thesis draft",
    "the team offsite",
]
_WHEN = [
    "on Monday morning",
    "last week",
    "before the deadline",
    "after lunch",
    "during the storm",
    "twice this month",
    "late on Friday",
    "without telling anyone",
    "at the last minute",
    "while on holiday",
    "for the third time",
    "early in the spring",
    "right after the meeting",
]
_BECAUSE = [
    "because the budget was cut",
    "since nobody had tested it",
    "as the client had asked",
    "because the weather turned bad",
    "after a long discussion",
    "because the logs showed errors",
    "since the price went up",
    "because a colleague was sick",
    "to save time next quarter",
    "because the previous version kept crashing",
    "so that the children could join",
]
_PREFS = [
    "prefers window seats on long flights",
    "is allergic to peanuts and shellfish",
    "likes to get summaries by email",
    "works from home on Thursdays",
    "speaks Portuguese and German",
    "wants invoices in euros",
    "hates meetings before ten",
    "runs a marathon every autumn",
    "keeps forgetting the VPN password",
    "is learning to play the cello",
    "reads mostly science fiction",
    "needs wheelchair access at venues",
    "drinks oat milk in coffee",
    "is saving for a house",
]
_AFTER = [
    "and nobody noticed until the customer complained",
    "which made the whole team a little nervous",
    "so we need to follow up with them tomorrow",
    "and the ticket is still open in the tracker",
    "but the numbers still do not add up",
    "and it took much longer than anyone expected",
    "so please double check before the next release",
    "which is worth remembering for next time",
    "although the manual says something different",
    "and everyone agreed it was the right call",
]
_NAMES = [
    "Alice",
    "Bruno",
    "Chen",
    "Dana",
    "Emeka",
    "Farah",
    "Goran",
    "Hana",
    "Ivan",
    "Julia",
    "Kenji",
    "Leila",
    "Mateo",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tariq",
    "Uma",
    "Viktor",
]
_TOPICS = [
    "how to rotate the API keys",
    "why the tests are flaky",
    "what the refund policy says",
    "where the spare keys are kept",
    "which trains run on Sundays",
    "how the cache invalidation works",
    "when the library closes",
    "who owns the billing code",
    "what to pack for the trip",
    "how to reset the router",
    "why the invoice total is wrong",
    "which vaccine is due next",
]


def _sentence(rng: random.Random) -> str:
    shape = rng.randrange(5)
    if shape == 0:
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_WHEN)}"
        if rng.random() < 0.6:
            s += f" {rng.choice(_BECAUSE)}"
    elif shape == 1:
        first, second = rng.sample(_PREFS, 2)
        s = f"{rng.choice(_NAMES)} {first}"
        if rng.random() < 0.7:
            s += f" and {second}"
    elif shape == 2:
        s = f"{rng.choice(_NAMES)} asked {rng.choice(_SUBJECTS)} {rng.choice(_TOPICS)} {rng.choice(_WHEN)}"
    elif shape == 3:
        s = (
            f"remember that {rng.choice(_NAMES)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
            f" and {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        )
    else:
        s = f"the user wants to know {rng.choice(_TOPICS)} {rng.choice(_BECAUSE)}"
    if rng.random() < 0.45:
        s += f" {rng.choice(_AFTER)}"
    words = s.split()
    while len(words) < 8:
        words += rng.choice(_WHEN).split()
    words = words[:30]
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences, the same for the same ``seed`` on every machine."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = _sentence(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


_T_NAMES = [
    "Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory", "Niaj",
    "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Yusuf", "Zoe", "Priya", "Kenji",
    "Amara", "Lars", "Sofia", "Mateo", "Chen", "Fatima", "Omar",
]  # fmt: skip
_T_FOODS = [
    "green tea", "black coffee", "sushi", "pasta", "tacos", "ramen", "salad", "pizza", "curry", "dumplings",
    "oatmeal", "pancakes", "falafel", "steak", "soup", "noodles", "yogurt", "sandwiches", "dark chocolate",
    "fresh fruit",
]  # fmt: skip
_T_HOBBIES = [
    "sailing", "chess", "hiking", "painting", "running", "gardening", "cycling", "knitting", "climbing",
    "swimming", "photography", "baking", "reading novels", "playing guitar", "yoga", "bird watching",
    "fishing", "skiing", "dancing", "pottery",
]  # fmt: skip
_T_DAYS = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "weekends",
    "holidays",
]
_T_CITIES = [
    "Lisbon", "Berlin", "Tokyo", "Nairobi", "Lima", "Oslo", "Toronto", "Seoul", "Madrid", "Cairo", "Sydney",
    "Dublin", "Prague", "Austin", "Mumbai",
]  # fmt: skip


def templated(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences of ONE template whose neighbours differ only in slot fills.

    The hardest case for a quantized model: near-ties everywhere, so small errors reorder top-5
    neighbours that varied text would keep (docs/quantization.md).
    """
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = (
            f"{rng.choice(_T_NAMES)} prefers {rng.choice(_T_FOODS)} and enjoys {rng.choice(_T_HOBBIES)} "
            f"on {rng.choice(_T_DAYS)} in {rng.choice(_T_CITIES)}."
        )
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out
