"""A realistic, deterministic demo shop, with the ground truth that produced it.

``tend demo-data`` uses this so a new install has something true-to-life to run on, and the
signal tests use it because every customer was generated from a known behaviour: the table
``demo_truth`` says who is a lapsed regular, when their next purchase was due and what they
replenish, so a signal's precision and recall can be measured instead of guessed.

Customer archetypes (share of customers). Most customers of a real shop are occasional: the
``occasional`` and ``one_time`` customers follow the published fits of real retail data
(docs/signals.md, "The demo population", cites them), and more than half of all customers
order only once in the three years:

============  =====  ==========================================================================
archetype     share  behaviour
============  =====  ==========================================================================
occasional     52 %  BG/NBD: a Poisson rate from a gamma mixture and a drop-out probability
                     after each repeat order from a beta mixture (the CDNOW fit); the category
                     and the season of the first order move the rate (``_REPEAT_RATE``);
                     ``lapsed`` is true once they have dropped out
one_time       24 %  leave right after their first order (the modified BG/NBD's drop-out at
                     time zero): mostly gifts and durables, often in the holiday season
regular         4 %  a personal cadence of 20–60 days (gamma jitter), favourite products
lapsed          3 %  a regular who stopped 3–12 months before ``as_of`` (``lapsed`` is true)
seasonal        6 %  the same week or two every year, skipping a year now and then: gifts
                     (Dec), garden (Apr/May), heating (Oct)
replenisher     4 %  re-buys a consumable every ``replenish_days`` × quantity (coffee, filters…)
service         4 %  books a service every ``service_interval_days`` (boiler, car, dental)
loyal           3 %  long-standing: ordering every 12–35 days since before the window, big baskets
============  =====  ==========================================================================

Occasional and one-time customers spend per order what the gamma-gamma model of the same data
says (each customer their own mean), so order values vary by customer.

Across all customers: ~25 % locale ``fr`` (mostly America/Montreal or Europe/Paris); marketing
consent express ~60 %, implied ~30 %, none ~10 %; ~1 % syntactically invalid emails; ~2 %
already unsubscribed; ~3 % without a first name (empty or NULL), so templates must fall back.

Determinism: customer ``i`` draws every number from its own generator seeded by
``(seed, i)``, so the contents never depend on ``chunk_customers`` (which only bounds memory
and transaction size), and a customer's history does not change when ``customers`` grows.
Order ids are numbered in customer order, which is also independent of the chunking.

The generator *empties* the four shop tables before writing: never point it at a real shop.
"""

from __future__ import annotations

import bisect
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

import numpy as np
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Date,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
)
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from tend.config import mask_url
from tend.errors import ConfigError
from tend.shop import schema as shop_schema
from tend.store.db import connect

CURRENCY = "CAD"

truth_metadata = MetaData()

#: What each demo customer really does; never read by the pipeline, only by tests and docs.
demo_truth = Table(
    "demo_truth",
    truth_metadata,
    Column("customer_id", String(64), primary_key=True),
    Column("archetype", String(32), nullable=False),
    # Mean days between two orders of this customer's pattern (regular, lapsed, loyal,
    # replenisher, service; occasional: 1 / their Poisson rate); NULL when there is no cadence
    # (one_time, seasonal).
    Column("cadence_days", Integer),
    # Centre day-of-year of a seasonal buyer's season, and which season it is.
    Column("seasonal_doy", Integer),
    Column("season", String(16)),
    # True when the customer has truly stopped buying as of ``as_of``: the lapsed archetype, an
    # occasional customer who has dropped out, and every one_time customer.
    Column("lapsed", Boolean, nullable=False),
    # The day after which a lapsed customer places no more orders (lapsed: 3–12 months before
    # as_of; occasional and one_time: their last order).
    Column("churned_at", Date),
    # When the pattern puts the next order: after as_of for active customers, before as_of
    # (the order they never placed) for lapsed ones; NULL when there is none (one_time, a
    # dropped-out occasional customer, or one whose next order is over ten years away).
    Column("next_due_on", Date),
    Column("service_sku", String(64)),
    Column("replenish_sku", String(64)),
    # Space-separated skus a regular/lapsed/loyal customer keeps coming back for.
    Column("favourite_skus", Text),
    Column("email_valid", Boolean, nullable=False),
)


@dataclass(frozen=True)
class DemoSummary:
    customers: int
    products: int
    orders: int
    order_lines: int

    def lines(self) -> list[str]:
        """Aligned "name  count" lines, so the CLI can print them as they are."""
        return [
            f"{name:<12}{value:>12,}"
            for name, value in (
                ("customers", self.customers),
                ("products", self.products),
                ("orders", self.orders),
                ("order_lines", self.order_lines),
            )
        ]


# --- catalogue -----------------------------------------------------------------------------

# sku, name, category, price, service_interval_days, replenish_days, complements
_CATALOGUE: tuple[tuple[str, str, str, str, int | None, int | None, str], ...] = (
    ("COF-BEANS-HOUSE", "House blend coffee beans 1 kg", "coffee", "24.00", None, 30,
     "COF-FILTER-PAPER COF-GRINDER"),
    ("COF-BEANS-ESPRESSO", "Espresso roast beans 1 kg", "coffee", "27.00", None, 30,
     "COF-MACHINE COF-DESCALER"),
    ("COF-BEANS-DECAF", "Decaf coffee beans 500 g", "coffee", "16.50", None, 30,
     "COF-FILTER-PAPER"),
    ("COF-FILTER-PAPER", "Paper coffee filters (200)", "coffee", "6.50", None, 90,
     "COF-BEANS-HOUSE"),
    ("COF-DESCALER", "Espresso machine descaler", "coffee", "12.00", None, 90, "COF-MACHINE"),
    ("COF-GRINDER", "Burr coffee grinder", "coffee", "129.00", None, None,
     "COF-BEANS-HOUSE COF-BEANS-ESPRESSO"),
    ("COF-MACHINE", "Espresso machine", "coffee", "449.00", None, None,
     "COF-BEANS-ESPRESSO COF-DESCALER"),
    ("HOM-WATER-FILTER", "Water filter cartridge", "home", "34.00", None, 60,
     "HOM-WATER-PITCHER"),
    ("HOM-WATER-PITCHER", "Filter water pitcher", "home", "39.00", None, None,
     "HOM-WATER-FILTER"),
    ("HOM-DETERGENT", "Laundry detergent 3 L", "home", "19.00", None, 45, ""),
    ("HOM-CANDLE", "Scented soy candle", "home", "18.00", None, None, "HOM-THROW"),
    ("HOM-THROW", "Wool throw blanket", "home", "89.00", None, None, "HOM-CANDLE"),
    ("HOM-TOWELS", "Cotton bath towels (set of 4)", "home", "59.00", None, None, ""),
    ("OFF-INK-BLACK", "Printer ink, black", "office", "32.00", None, 45,
     "OFF-INK-COLOUR OFF-PAPER"),
    ("OFF-INK-COLOUR", "Printer ink, colour", "office", "38.00", None, 60, "OFF-INK-BLACK"),
    ("OFF-PAPER", "Printer paper (500 sheets)", "office", "9.00", None, 60, "OFF-INK-BLACK"),
    ("OFF-PRINTER", "Inkjet printer", "office", "149.00", None, None,
     "OFF-INK-BLACK OFF-INK-COLOUR"),
    ("OFF-NOTEBOOK", "Dotted notebook A5", "office", "14.00", None, None, ""),
    ("PET-FOOD-DOG", "Dog food 12 kg", "pets", "74.00", None, 30, "PET-TOY"),
    ("PET-FOOD-CAT", "Cat food 6 kg", "pets", "46.00", None, 30, "PET-LITTER"),
    ("PET-LITTER", "Clumping cat litter 15 kg", "pets", "22.00", None, 21, "PET-FOOD-CAT"),
    ("PET-TOY", "Rope chew toy", "pets", "12.00", None, None, "PET-FOOD-DOG"),
    ("GAR-SEEDS-VEG", "Vegetable seed collection", "garden", "24.00", None, None,
     "GAR-SOIL GAR-FERTILISER"),
    ("GAR-SEEDS-FLOWER", "Wildflower seed mix", "garden", "14.00", None, None, "GAR-SOIL"),
    ("GAR-SOIL", "Organic potting soil 50 L", "garden", "17.00", None, None,
     "GAR-FERTILISER"),
    ("GAR-FERTILISER", "Organic fertiliser 5 kg", "garden", "29.00", None, None, "GAR-SOIL"),
    ("GAR-GLOVES", "Gardening gloves", "garden", "15.00", None, None, "GAR-PRUNER"),
    ("GAR-PRUNER", "Bypass pruner", "garden", "42.00", None, None, "GAR-GLOVES"),
    ("GAR-HOSE", "Garden hose 25 m", "garden", "55.00", None, None, ""),
    ("HEA-BOILER-SERVICE", "Annual boiler service", "heating", "189.00", 365, None,
     "HEA-THERMOSTAT"),
    ("HEA-CHIMNEY-SWEEP", "Chimney sweep", "heating", "159.00", 365, None, "HEA-FIREWOOD"),
    ("HEA-FURNACE-FILTER", "Furnace filter", "heating", "26.00", None, 90, ""),
    ("HEA-THERMOSTAT", "Smart thermostat", "heating", "229.00", None, None, ""),
    ("HEA-FIREWOOD", "Kiln-dried firewood bundle", "heating", "12.00", None, None,
     "HEA-FIRESTARTER"),
    ("HEA-FIRESTARTER", "Natural fire starters (48)", "heating", "9.00", None, None,
     "HEA-FIREWOOD"),
    ("GIF-CARD-50", "Gift card $50", "gifts", "50.00", None, None, "GIF-WRAP"),
    ("GIF-CARD-100", "Gift card $100", "gifts", "100.00", None, None, "GIF-WRAP"),
    ("GIF-BOX-CHOCOLATE", "Chocolate gift box", "gifts", "39.00", None, None, "GIF-WRAP"),
    ("GIF-BOX-TEA", "Tea tasting gift set", "gifts", "45.00", None, None, "GIF-WRAP"),
    ("GIF-ORNAMENT", "Hand-blown glass ornament", "gifts", "22.00", None, None, "GIF-WRAP"),
    ("GIF-WRAP", "Gift wrapping", "gifts", "5.00", None, None, ""),
    ("CAR-CHECKUP", "Car check-up", "car", "129.00", 180, None, "CAR-WIPERS"),
    ("CAR-TIRE-SWAP", "Seasonal tire swap", "car", "89.00", 182, None, "CAR-WASHER-FLUID"),
    ("CAR-WIPERS", "Wiper blades (pair)", "car", "34.00", None, None, "CAR-WASHER-FLUID"),
    ("CAR-WASHER-FLUID", "Windshield washer fluid 4 L", "car", "6.00", None, 60, ""),
    ("DEN-CLEANING", "Dental cleaning", "dental", "145.00", 182, None, "DEN-BRUSH-HEADS"),
    ("DEN-CHECKUP", "Dental exam", "dental", "95.00", 365, None, "DEN-FLOSS"),
    ("DEN-BRUSH-HEADS", "Toothbrush heads (4)", "dental", "24.00", None, 90, "DEN-FLOSS"),
    ("DEN-FLOSS", "Dental floss (3 pack)", "dental", "8.00", None, 60, "DEN-BRUSH-HEADS"),
    ("DEN-WHITENING", "Whitening kit", "dental", "79.00", None, None, ""),
)

_SKUS: tuple[str, ...] = tuple(p[0] for p in _CATALOGUE)
_SKU_INDEX: dict[str, int] = {sku: k for k, sku in enumerate(_SKUS)}
_PRICE_CENTS: tuple[int, ...] = tuple(int(Decimal(p[3]) * 100) for p in _CATALOGUE)
_SERVICE_DAYS: tuple[int | None, ...] = tuple(p[4] for p in _CATALOGUE)
_REPLENISH_DAYS: tuple[int | None, ...] = tuple(p[5] for p in _CATALOGUE)
_COMPLEMENTS: tuple[tuple[int, ...], ...] = tuple(
    tuple(_SKU_INDEX[c] for c in p[6].split()) for p in _CATALOGUE
)


@dataclass(frozen=True)
class _Pool:
    """Weighted products to draw from; cumulative weights make a draw one bisect."""

    items: tuple[int, ...]
    cum: tuple[float, ...]

    @classmethod
    def of(cls, weighted: Iterable[tuple[str, float]]) -> _Pool:
        items, cum, total = [], [], 0.0
        for sku, weight in weighted:
            total += weight
            items.append(_SKU_INDEX[sku])
            cum.append(total)
        return cls(tuple(items), tuple(c / total for c in cum))

    def pick(self, u: float) -> int:
        return self.items[min(bisect.bisect_right(self.cum, u), len(self.items) - 1)]


def _cheaper_first(skus: Iterable[str]) -> _Pool:
    # Cheap things sell more often than expensive ones; 1/sqrt(price) is a gentle tilt.
    return _Pool.of((s, 1.0 / (_PRICE_CENTS[_SKU_INDEX[s]] / 100) ** 0.5) for s in skus)


_GOODS = [p[0] for p in _CATALOGUE if p[4] is None]
_EVERYDAY = [p[0] for p in _CATALOGUE if p[4] is None and p[2] in
             ("coffee", "home", "office", "pets", "dental")]
_POOL_ANY = _cheaper_first(_GOODS)
_POOL_EVERYDAY = _cheaper_first(_EVERYDAY)
_POOL_PREMIUM = _Pool.of((s, 1.0) for s in _GOODS if _PRICE_CENTS[_SKU_INDEX[s]] >= 8900)
_POOL_REPLENISH = _Pool.of((
    ("COF-BEANS-HOUSE", 5), ("COF-BEANS-ESPRESSO", 3), ("COF-BEANS-DECAF", 1),
    ("HOM-WATER-FILTER", 3), ("HOM-DETERGENT", 1), ("OFF-INK-BLACK", 2),
    ("PET-FOOD-DOG", 2), ("PET-FOOD-CAT", 2), ("PET-LITTER", 1), ("DEN-BRUSH-HEADS", 1),
    ("HEA-FURNACE-FILTER", 1),
))
_POOL_SERVICE = _Pool.of((
    ("HEA-BOILER-SERVICE", 3), ("HEA-CHIMNEY-SWEEP", 1), ("CAR-CHECKUP", 3),
    ("CAR-TIRE-SWAP", 2), ("DEN-CLEANING", 3), ("DEN-CHECKUP", 2),
))
# season name -> (centre day of year, products bought then)
_SEASONS: tuple[tuple[str, int, _Pool], ...] = (
    ("gifts", 345, _cheaper_first(p[0] for p in _CATALOGUE if p[2] == "gifts")),
    ("garden", 125, _cheaper_first(p[0] for p in _CATALOGUE if p[2] == "garden")),
    ("heating", 285, _cheaper_first(
        ("HEA-FIREWOOD", "HEA-FIRESTARTER", "HEA-FURNACE-FILTER", "HEA-THERMOSTAT",
         "HOM-THROW", "HOM-CANDLE"))),
)

# --- occasional customers -------------------------------------------------------------------

#: BG/NBD fitted to the CDNOW purchase log (Fader, Hardie & Lee 2005, "Counting your customers
#: the easy way"): purchase rates per *week* ~ Gamma(r, alpha), drop-out probability after
#: each repeat purchase ~ Beta(a, b).
BGNBD_CDNOW = (0.243, 4.414, 0.793, 2.426)
#: Gamma-gamma spend fitted to the same data (the model of Fader, Hardie & Lee 2005, "RFM and
#: CLV"; the estimates of Fader & Hardie 2013, "The gamma-gamma model of monetary value"): an
#: order is worth Gamma(p, nu), each customer's nu ~ Gamma(q, gamma) (rates, so a customer's
#: mean order is p / nu and the shop's p gamma / (q - 1)). CDNOW's dollars of 1997 are scaled by
#: ``_SPEND_SCALE`` to this catalogue's prices (a mean order of about $70 instead of $35).
GAMMA_GAMMA_CDNOW = (6.25, 3.74, 15.44)
_SPEND_SCALE = 2.0
#: A first order tells something about the customer: consumables bring people back, gifts and
#: one-off purchases much less (the rate of an occasional customer is multiplied by this, per
#: category of their first order), and customers won in the holiday rush come back less often
#: (``_HOLIDAY_RATE``). Published fits give the mixtures, not these effects: they are the
#: demo's assumption, and what a ranking can learn from a shop's own history.
_REPEAT_RATE = {"coffee": 2.0, "pets": 2.0, "office": 1.4, "dental": 1.2, "home": 1.0,
                "car": 0.8, "heating": 0.8, "garden": 0.7, "gifts": 0.4}
_HOLIDAY_RATE = 0.5
#: The holiday rush: 20 November to 24 December (days of the year in a common year).
_HOLIDAY = (324, 358)
_MAX_RATE_PER_DAY = 0.3  # a gamma draw of r = 0.24 has a long tail: at most ~2 orders a week
_CATEGORY_OF: tuple[str, ...] = tuple(p[2] for p in _CATALOGUE)
_POOL_BY_CATEGORY: dict[str, _Pool] = {
    cat: _cheaper_first(p[0] for p in _CATALOGUE if p[2] == cat and p[4] is None)
    for cat in dict.fromkeys(p[2] for p in _CATALOGUE if p[4] is None)
}
#: What one-time buyers buy: gifts and durables far more than consumables.
_POOL_ONE_TIME = _Pool.of(
    (s, (1.0 / (_PRICE_CENTS[_SKU_INDEX[s]] / 100) ** 0.5)
     * (4.0 if _CATEGORY_OF[_SKU_INDEX[s]] == "gifts"
        else 0.3 if _REPLENISH_DAYS[_SKU_INDEX[s]] else 2.0))
    for s in _GOODS)


# --- people --------------------------------------------------------------------------------

_ARCHETYPES: tuple[tuple[str, float], ...] = (
    ("occasional", 0.52), ("one_time", 0.24), ("regular", 0.04), ("lapsed", 0.03),
    ("seasonal", 0.06), ("replenisher", 0.04), ("service", 0.04), ("loyal", 0.03),
)
_EN_FIRST = (
    "Olivia", "Liam", "Emma", "Noah", "Charlotte", "James", "Amelia", "William", "Sophia",
    "Benjamin", "Isabella", "Lucas", "Mia", "Henry", "Evelyn", "Alexander", "Harper", "Jack",
    "Emily", "Daniel", "Abigail", "Michael", "Ella", "Owen", "Grace", "Samuel", "Chloe", "Ethan",
    "Hannah", "Matthew", "Priya", "Wei",
)
_EN_LAST = (
    "Smith", "Brown", "Wilson", "Taylor", "Johnson", "Williams", "Jones", "Miller", "Davis",
    "Martin", "Anderson", "Thompson", "White", "Clark", "Walker", "Young", "Campbell",
    "Robinson", "Wright", "Scott", "MacDonald", "Murphy", "O'Brien", "Patel", "Nguyen", "Singh",
    "Chen", "Lee", "Kim", "Evans",
)
_FR_FIRST = (
    "Élodie", "François", "Hélène", "Léa", "Chloé", "Mathieu", "Gabriel", "Benoît", "Amélie",
    "Zoé", "Jérôme", "Noémie", "Étienne", "Camille", "Louis", "Manon", "Antoine", "Juliette",
    "Olivier", "Sophie", "Maxime", "Émilie", "Julien", "Marie-Ève", "Pierre", "Geneviève",
    "Thomas", "Isabelle",
)
_FR_LAST = (
    "Tremblay", "Gagnon", "Roy", "Côté", "Bouchard", "Gauthier", "Morin", "Lavoie", "Fortin",
    "Gagné", "Ouellet", "Pelletier", "Bélanger", "Lévesque", "Bergeron", "Leblanc", "Paquette",
    "Girard", "Simard", "Boucher", "Dubois", "Lefèvre", "Moreau", "Laurent", "Bernard", "Petit",
    "Durand", "Fournier", "St-Pierre", "D'Amours",
)
# timezone, standard UTC offset in hours (only used to put orders at plausible local hours;
# ignoring daylight saving time shifts a few orders by an hour, which nothing depends on).
_EN_TZ: tuple[tuple[str, float, float], ...] = (
    ("America/Toronto", -5, 0.35), ("America/New_York", -5, 0.15),
    ("America/Vancouver", -8, 0.15), ("Europe/London", 0, 0.15),
    ("America/Edmonton", -7, 0.10), ("America/Halifax", -4, 0.05),
    ("America/Winnipeg", -6, 0.05),
)
_FR_TZ: tuple[tuple[str, float, float], ...] = (
    ("America/Montreal", -5, 0.65), ("Europe/Paris", 1, 0.30), ("America/Moncton", -4, 0.05),
)
_DOMAINS = ("example.com", "example.org", "example.net")


def _cumulative(weights: Sequence[float]) -> tuple[float, ...]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return tuple(c / total for c in out)


_ARCH_CUM = _cumulative([w for _, w in _ARCHETYPES])
_EN_TZ_CUM = _cumulative([w for *_, w in _EN_TZ])
_FR_TZ_CUM = _cumulative([w for *_, w in _FR_TZ])


def _pick_index(cum: Sequence[float], u: float) -> int:
    return min(bisect.bisect_right(cum, u), len(cum) - 1)


def _ascii(name: str) -> str:
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return "".join(ch for ch in plain.lower() if ch.isalnum() or ch == "-")


# --- generation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Window:
    start: date
    span_days: int
    start_epoch: int  # midnight UTC of ``start``, in seconds

    @property
    def end_epoch(self) -> int:
        """Last second of as_of, UTC: nothing is ever generated after it."""
        return self.start_epoch + self.span_days * 86400 - 1

    def day(self, offset: float) -> date:
        return self.start + timedelta(days=int(offset))


class _Draws:
    """Uniform draws fetched from numpy in blocks: one C call instead of one per number."""

    __slots__ = ("_buf", "_pos", "rng")

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._buf: list[float] = rng.random(64).tolist()
        self._pos = 0

    def u(self) -> float:
        if self._pos == len(self._buf):
            self._buf = self.rng.random(64).tolist()
            self._pos = 0
        self._pos += 1
        return self._buf[self._pos - 1]

    def between(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.u()


# A basket is a list of (product index, quantity, unit price in cents).
_Basket = list[tuple[int, int, int]]


@dataclass
class _Customer:
    row: dict[str, Any]
    truth: dict[str, Any]
    orders: list[tuple[int, _Basket]] = field(default_factory=list)  # (epoch seconds, basket)


def _renewal(
    rng: np.random.Generator, first: float, mean: float, shape: float, stop: float
) -> tuple[list[float], float]:
    """Day offsets of a renewal process from ``first``: those before ``stop``, and the next one.

    Gamma gaps give the "every ~N days, give or take" rhythm of real repeat buyers; the shape
    sets how regular they are (higher is more regular). Gaps under a day are rounded up.
    """
    times = [first]
    while times[-1] < stop:
        n = int((stop - times[-1]) / mean * 1.2) + 3
        gaps = np.maximum(rng.gamma(shape, mean / shape, size=n), 1.0)
        times.extend((times[-1] + np.cumsum(gaps)).tolist())
    k = bisect.bisect_left(times, stop)
    return times[:k], times[k]


def _line(d: _Draws, product: int, qty: int) -> tuple[int, int, int]:
    price = _PRICE_CENTS[product]
    if d.u() < 0.08:  # a promotion: 10 % off, rounded to the cent
        price = (price * 9 + 5) // 10
    return (product, qty, price)


def _qty(d: _Draws, p2: float, p3: float = 0.0) -> int:
    u = d.u()
    return 3 if u < p3 else 2 if u < p3 + p2 else 1


def _basket(d: _Draws, picks: Iterable[tuple[int, int]]) -> _Basket:
    """Lines from (product, quantity) picks, a product at most once per order."""
    seen: dict[int, int] = {}
    for product, qty in picks:
        seen[product] = seen.get(product, 0) + qty
    return [_line(d, product, qty) for product, qty in seen.items()]


def _favourites(d: _Draws, pool: _Pool, k: int) -> list[int]:
    favs: list[int] = []
    for _ in range(k * 4):
        p = pool.pick(d.u())
        if p not in favs:
            favs.append(p)
            if len(favs) == k:
                break
    return favs


def _favourite_picks(
    d: _Draws, favs: Sequence[int], n_lines: int, p_extra: float, p2: float, p3: float
) -> list[tuple[int, int]]:
    """Mostly the customer's usual products, now and then something else."""
    picks = [(favs[int(d.u() * len(favs))], _qty(d, p2, p3)) for _ in range(n_lines)]
    if d.u() < p_extra:
        picks.append((_POOL_ANY.pick(d.u()), 1))
    return picks


def _spend_rate(rng: np.random.Generator) -> float:
    """A customer's gamma-gamma ``nu``: their orders are worth Gamma(p, nu) (CDNOW dollars)."""
    _, q, gamma = GAMMA_GAMMA_CDNOW
    return float(rng.gamma(q, 1.0 / gamma))


def _valued_basket(d: _Draws, rng: np.random.Generator, first: int, nu: float) -> _Basket:
    """An order around the customer's own spend: ``first``, then products of its category
    (now and then anything) until the order is worth what the gamma-gamma draw says."""
    p = GAMMA_GAMMA_CDNOW[0]
    target = float(rng.gamma(p, 1.0 / nu)) * _SPEND_SCALE * 100
    pool = _POOL_BY_CATEGORY[_CATEGORY_OF[first]]
    picks, total = [(first, 1)], _PRICE_CENTS[first]
    while total < target and len(picks) < 6:
        product = pool.pick(d.u()) if d.u() < 0.7 else _POOL_ANY.pick(d.u())
        qty = 1 + (d.u() < 0.2)
        picks.append((product, qty))
        total += qty * _PRICE_CENTS[product]
    return _basket(d, picks)


def _in_holiday(day: date) -> bool:
    doy = day.timetuple().tm_yday - (day.month > 2 and day.year % 4 == 0)
    return _HOLIDAY[0] <= doy <= _HOLIDAY[1]


def _one_time_day(d: _Draws, w: _Window) -> float:
    """When a one-time buyer orders: four in ten in the holiday rush, the rest any day."""
    if d.u() < 0.4:
        rushes = [(date(y, 1, 1) - w.start).days + _HOLIDAY[0] - 1
                  for y in range(w.start.year, w.start.year + w.span_days // 365 + 2)]
        rushes = [t for t in rushes if t >= 0 and t + _HOLIDAY[1] - _HOLIDAY[0] < w.span_days]
        if rushes:
            return rushes[int(d.u() * len(rushes))] + d.between(0, _HOLIDAY[1] - _HOLIDAY[0])
    return d.between(0, w.span_days)


def _generate(i: int, seed: int, w: _Window) -> _Customer:
    """Customer ``i``: their row, their truth and their orders, from their own generator."""
    rng = np.random.default_rng([seed, i])
    d = _Draws(rng)
    n = i + 1
    customer_id = f"C{n:06d}"

    archetype = _ARCHETYPES[_pick_index(_ARCH_CUM, d.u())][0]
    fr = d.u() < 0.25
    firsts, lasts = (_FR_FIRST, _FR_LAST) if fr else (_EN_FIRST, _EN_LAST)
    first = firsts[int(d.u() * len(firsts))]
    last = lasts[int(d.u() * len(lasts))]
    tz_name, tz_hours, _ = (
        _FR_TZ[_pick_index(_FR_TZ_CUM, d.u())] if fr else _EN_TZ[_pick_index(_EN_TZ_CUM, d.u())]
    )
    u_consent = d.u()
    consent = "express" if u_consent < 0.6 else "implied" if u_consent < 0.9 else "none"
    domain = _DOMAINS[int(d.u() * len(_DOMAINS))]
    local = f"{_ascii(first)}.{_ascii(last)}.{n}"
    email_valid = d.u() >= 0.01
    if email_valid:
        email = f"{local}@{domain}"
    else:  # the typos real exports contain
        email = (
            f"{local}.{domain}",  # no at sign
            f"{_ascii(first)}{n}@",  # no domain
            f"{first.lower()} {_ascii(last)}{n}@{domain}",  # a space
            f"{local}@{domain.split('.')[0]}",  # no dot in the domain
        )[int(d.u() * 4)]
    unsubscribed = d.u() < 0.02
    first_name: str | None = first
    if d.u() < 0.03:
        first_name = None if d.u() < 0.5 else ""

    truth: dict[str, Any] = {
        "customer_id": customer_id, "archetype": archetype, "cadence_days": None,
        "seasonal_doy": None, "season": None, "lapsed": False, "churned_at": None,
        "next_due_on": None, "service_sku": None, "replenish_sku": None,
        "favourite_skus": None, "email_valid": email_valid,
    }
    span = float(w.span_days)
    events: list[tuple[float, _Basket]] = []

    if archetype == "one_time":
        nu = _spend_rate(rng)
        when = _one_time_day(d, w)
        first = _POOL_ONE_TIME.pick(d.u())
        truth["lapsed"] = True
        truth["churned_at"] = w.day(when)
        events.append((when, _valued_basket(d, rng, first, nu)))

    elif archetype == "occasional":
        r, alpha, a, b = BGNBD_CDNOW
        rate = min(rng.gamma(r, 1.0 / alpha) / 7.0, _MAX_RATE_PER_DAY)
        p_drop = rng.beta(a, b)
        nu = _spend_rate(rng)
        first_at = d.between(0, span)
        first = _POOL_ANY.pick(d.u())
        category = _CATEGORY_OF[first]
        rate *= _REPEAT_RATE[category] * (_HOLIDAY_RATE if _in_holiday(w.day(first_at))
                                          else 1.0)
        rate = max(rate, 1e-9)
        times, t, alive = [first_at], first_at, True
        while True:  # BG/NBD: Poisson orders, a drop-out coin after each repeat order
            t += rng.exponential(1.0 / rate)
            if t >= span:
                break
            times.append(t)
            if d.u() < p_drop:
                alive = False
                break
        truth["cadence_days"] = min(round(1.0 / rate), 99_999)
        truth["lapsed"] = not alive
        truth["churned_at"] = None if alive else w.day(times[-1])
        truth["next_due_on"] = w.day(t) if alive and t < span + 3650 else None
        home = _POOL_BY_CATEGORY[category]
        for k, t in enumerate(times):
            product = first if k == 0 else home.pick(d.u()) if d.u() < 0.7 else _POOL_ANY.pick(
                d.u())
            events.append((t, _valued_basket(d, rng, product, nu)))

    elif archetype in ("regular", "lapsed", "loyal"):
        loyal = archetype == "loyal"
        cadence = d.between(12, 35) if loyal else d.between(20, 60)
        favs = _favourites(d, _POOL_EVERYDAY, 3 + int(d.u() * 4) if loyal else
                           2 + int(d.u() * 3))
        truth["favourite_skus"] = " ".join(_SKUS[p] for p in favs)
        truth["cadence_days"] = round(cadence)
        if archetype == "lapsed":
            first_at = d.between(0, min(cadence, 0.15 * span))
            stop = max(span - d.between(91, 365), first_at + 2 * cadence)
            truth["lapsed"] = True
            truth["churned_at"] = w.day(stop)
        else:
            existing = loyal or d.u() < 0.6
            first_at = d.between(0, min(cadence, span - 1)) if existing else d.between(
                0, 0.75 * span)
            stop = span
        times, next_at = _renewal(rng, first_at, cadence, 5.0 if loyal else 6.0, stop)
        truth["next_due_on"] = w.day(next_at)
        for t in times:
            if loyal:
                picks = _favourite_picks(d, favs, 2 + int(d.u() * 3), 0.3, 0.3, 0.1)
                if d.u() < 0.08:  # the occasional big-ticket item that makes them valuable
                    picks.append((_POOL_PREMIUM.pick(d.u()), 1))
            else:
                picks = _favourite_picks(d, favs, 1 + (d.u() < 0.4), 0.15, 0.15, 0.0)
            events.append((t, _basket(d, picks)))

    elif archetype == "seasonal":
        season, centre, pool = _SEASONS[int(d.u() * len(_SEASONS))]
        doy = centre + round(d.between(-7, 7))
        truth["season"], truth["seasonal_doy"] = season, doy
        as_of = w.day(span - 1)
        for year in range(w.start.year, as_of.year + 2):
            peak = date(year, 1, 1) + timedelta(days=doy - 1)
            if peak > as_of and truth["next_due_on"] is None:
                truth["next_due_on"] = peak
            if d.u() < 0.10:  # skipped this year
                continue
            for _ in range(1 + (d.u() < 0.3)):
                jitter = float(np.clip(rng.normal(0.0, 4.0), -12, 12))
                t = (peak - w.start).days + 0.5 + jitter
                lines = 1 + int(d.u() * 3)
                if 0 <= t < span:
                    events.append((t, _basket(d, [(pool.pick(d.u()), _qty(d, 0.2, 0.05))
                                                  for _ in range(lines)])))
        if not events:  # every season in the window was skipped: buy in the last one anyway
            peaks = ((date(y, 1, 1) - w.start).days + doy - 1 + 0.5
                     for y in (as_of.year, as_of.year - 1))
            peak_t = next((t for t in peaks if 0 <= t < span), span - 0.5)
            events.append((peak_t, _basket(d, [(pool.pick(d.u()), 1)])))

    elif archetype == "replenisher":
        product = _POOL_REPLENISH.pick(d.u())
        qty = _qty(d, 0.2, 0.05)
        cadence = (_REPLENISH_DAYS[product] or 30) * qty * d.between(0.9, 1.3)
        truth["replenish_sku"] = _SKUS[product]
        truth["cadence_days"] = round(cadence)
        times, next_at = _renewal(rng, d.between(0, 0.6 * span), cadence, 10.0, span)
        truth["next_due_on"] = w.day(next_at)
        device = [c for c in _COMPLEMENTS[product] if _REPLENISH_DAYS[c] is None]
        for k, _t in enumerate(times):
            picks = [(product, qty)]
            if k == 0 and device and d.u() < 0.4:
                picks.append((device[0], 1))
            if _COMPLEMENTS[product] and d.u() < 0.15:
                comps = _COMPLEMENTS[product]
                picks.append((comps[int(d.u() * len(comps))], 1))
            events.append((_t, _basket(d, picks)))

    else:  # service
        product = _POOL_SERVICE.pick(d.u())
        interval = (_SERVICE_DAYS[product] or 365) * d.between(1.0, 1.12)
        truth["service_sku"] = _SKUS[product]
        truth["cadence_days"] = round(interval)
        first_at = d.between(0, interval) if d.u() < 0.7 else d.between(0, 0.8 * span)
        times, next_at = _renewal(rng, min(first_at, span - 1), interval, 120.0, span)
        truth["next_due_on"] = w.day(next_at)
        for t in times:
            picks = [(product, 1)]
            if _COMPLEMENTS[product] and d.u() < 0.2:
                picks.append((_COMPLEMENTS[product][0], 1))
            events.append((t, _basket(d, picks)))

    # Local shopping hours (mostly afternoon and evening), kept on the same UTC day so an
    # order on the last day can never spill past as_of.
    tods = np.clip(rng.normal(14.5 * 3600, 3.5 * 3600, size=len(events)), 7 * 3600, 23 * 3600)
    stamped = sorted(
        (w.start_epoch + int(t) * 86400 + int(tod - tz_hours * 3600) % 86400, basket)
        for (t, basket), tod in zip(events, tods.tolist(), strict=True)
    )
    first_ts = stamped[0][0]
    if archetype == "loyal":  # long-standing: their account predates the window
        created = w.start_epoch - int(d.between(1, 6) * 365 * 86400)
    elif d.u() < 0.5:  # signed up at checkout
        created = first_ts - int(d.between(60, 1800))
    else:
        created = first_ts - int(d.between(1, 120) * 86400)
    # Express consent is ticked at sign-up; implied consent comes from the first purchase.
    consent_at = (created + int(d.between(0, min(600, first_ts - created)))
                  if consent == "express" else first_ts if consent == "implied" else None)
    unsubscribed_at = None
    if unsubscribed:
        since = max(created, consent_at or created)
        unsubscribed_at = int(d.between(since, w.end_epoch))
    row = {  # timestamps as epoch seconds until written (see _insert)
        "customer_id": customer_id, "email": email, "first_name": first_name,
        "last_name": last, "locale": "fr" if fr else "en", "timezone": tz_name,
        "marketing_consent": consent, "consent_at": consent_at, "created_at": created,
        "unsubscribed_at": unsubscribed_at,
    }
    return _Customer(row, truth, stamped)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ts(epoch_seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=epoch_seconds)


def _money(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


@lru_cache(maxsize=16384)
def _sqlite_day(day: int) -> str:
    d = _EPOCH + timedelta(days=day)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d} "


def _sqlite_time(epoch_seconds: int) -> str:
    """Exactly what SQLAlchemy's SQLite DATETIME stores for this UTC instant, 5x faster."""
    day, second = divmod(epoch_seconds, 86400)
    hour, rest = divmod(second, 3600)
    return f"{_sqlite_day(day)}{hour:02d}:{rest // 60:02d}:{rest % 60:02d}.000000"


def _window(as_of: date, years: int) -> _Window:
    try:
        start = as_of.replace(year=as_of.year - years)
    except ValueError:  # 29 February
        start = as_of.replace(year=as_of.year - years, day=28)
    start += timedelta(days=1)
    start_epoch = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp())
    return _Window(start, (as_of - start).days + 1, start_epoch)


def _product_rows() -> list[dict[str, Any]]:
    return [
        {"sku": sku, "name": name, "category": cat, "price": Decimal(price),
         "service_interval_days": svc, "replenish_days": rep, "complements": comp or None}
        for sku, name, cat, price, svc, rep, comp in _CATALOGUE
    ]


def _insert(
    conn: Connection,
    table: Table,
    rows: Sequence[tuple[Any, ...]],
    *,
    epochs: Sequence[str] = (),
    cents: Sequence[str] = (),
) -> None:
    """Insert rows given as tuples in the table's column order.

    Timestamps (columns ``epochs``) arrive as epoch seconds and money (columns ``cents``) as
    integer cents, and are converted only here. On SQLite the rows then go straight to the
    driver's executemany, in the very format SQLAlchemy would have written: building a
    datetime, a Decimal and a parameter dict per row was most of the time of a large demo.
    Other databases get SQLAlchemy's batched "insertmanyvalues", which is what makes
    PostgreSQL fast.
    """
    if not rows:
        return
    columns = list(table.columns)
    sqlite = conn.dialect.name == "sqlite"
    convert: list[tuple[int, Callable[[Any], Any]]] = []
    for k, column in enumerate(columns):
        if column.key in epochs:
            convert.append((k, _sqlite_time if sqlite else _ts))
        elif column.key in cents:
            convert.append((k, (lambda c: c / 100) if sqlite else _money))
        elif sqlite:
            dialect = conn.dialect
            f = column.type.dialect_impl(dialect).bind_processor(dialect)
            if f is not None:
                convert.append((k, f))
    ready: list[tuple[Any, ...]] = []
    for r in rows:
        row = list(r)
        for k, f in convert:
            if row[k] is not None:
                row[k] = f(row[k])
        ready.append(tuple(row))
    if sqlite:
        conn.exec_driver_sql(str(table.insert().compile(dialect=conn.dialect)), ready)
    else:
        keys = [c.key for c in columns]
        conn.execute(table.insert(), [dict(zip(keys, r, strict=True)) for r in ready])


def _clear(conn: Connection) -> None:
    tables = (shop_schema.order_lines, shop_schema.orders, shop_schema.customers,
              shop_schema.products, demo_truth)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("TRUNCATE " + ", ".join(t.name for t in tables))
    else:
        for t in tables:
            conn.execute(delete(t))


def generate_demo_shop(
    url: str,
    *,
    customers: int,
    seed: int,
    as_of: date,
    years: int = 3,
    chunk_customers: int = 5000,
) -> DemoSummary:
    """Fill the shop tables at ``url`` with ``customers`` demo customers and their history.

    Orders span ``years`` years up to the end of ``as_of`` (UTC). Rows are written one chunk
    of customers per transaction, so memory stays flat however many customers are asked for;
    an interrupted run leaves whole customers only and is fixed by running it again.
    """
    if customers < 0:
        raise ConfigError(f"customers must be 0 or more, got {customers}: pass e.g. 1000")
    if years < 1:
        raise ConfigError(f"years must be at least 1, got {years}: pass e.g. 3")
    if chunk_customers < 1:
        raise ConfigError(f"chunk_customers must be at least 1, got {chunk_customers}")
    if isinstance(as_of, datetime):
        as_of = as_of.date()
    w = _window(as_of, years)
    try:
        engine = connect(url)
        shop_schema.metadata.create_all(engine)
        truth_metadata.create_all(engine)
    except ArgumentError as exc:
        raise ConfigError(
            f"cannot use database URL {mask_url(url)!r} ({exc}): use e.g. "
            "sqlite:///var/shop.db or postgresql://user@host/dbname"
        ) from exc
    except SQLAlchemyError as exc:
        raise ConfigError(
            f"cannot open the shop database {mask_url(url)}: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]} — check that it is running and the URL is right"
        ) from exc

    products = _product_rows()
    n_orders = n_lines = 0
    cust_keys = [c.key for c in shop_schema.customers.columns]
    truth_keys = [c.key for c in demo_truth.columns]
    # Secondary indexes are dropped while loading and rebuilt once at the end: keeping
    # three random-order B-trees up to date row by row is slower than building them.
    bulk_indexes = [*shop_schema.orders.indexes, *shop_schema.order_lines.indexes]
    with engine.connect() as conn:
        sqlite_cache = None
        if conn.dialect.name == "sqlite":  # big enough for the primary keys of a large demo
            sqlite_cache = conn.exec_driver_sql("PRAGMA cache_size").scalar()
            conn.exec_driver_sql("PRAGMA cache_size=-65536")
            conn.commit()
        done = False
        try:
            with conn.begin():
                _clear(conn)
                for index in bulk_indexes:
                    index.drop(conn, checkfirst=True)
                conn.execute(shop_schema.products.insert(), products)
            for chunk_start in range(0, customers, chunk_customers):
                cust_rows: list[tuple[Any, ...]] = []
                truth_rows: list[tuple[Any, ...]] = []
                order_rows: list[tuple[Any, ...]] = []
                line_rows: list[tuple[Any, ...]] = []
                for i in range(chunk_start, min(chunk_start + chunk_customers, customers)):
                    c = _generate(i, seed, w)
                    cust_rows.append(tuple(c.row[k] for k in cust_keys))
                    truth_rows.append(tuple(c.truth[k] for k in truth_keys))
                    customer_id = c.row["customer_id"]
                    for epoch, basket in c.orders:
                        n_orders += 1
                        order_id = f"O{n_orders:07d}"
                        total = 0
                        for product, qty, price in basket:
                            total += qty * price
                            line_rows.append((order_id, _SKUS[product], qty, price))
                        order_rows.append((order_id, customer_id, epoch, total, CURRENCY))
                n_lines += len(line_rows)
                with conn.begin():
                    _insert(conn, shop_schema.customers, cust_rows,
                            epochs=("consent_at", "created_at", "unsubscribed_at"))
                    _insert(conn, demo_truth, truth_rows)
                    _insert(conn, shop_schema.orders, order_rows, epochs=("ordered_at",),
                            cents=("total",))
                    _insert(conn, shop_schema.order_lines, line_rows, cents=("unit_price",))
            done = True
        finally:
            try:
                if conn.in_transaction():
                    conn.rollback()
                with conn.begin():
                    for index in bulk_indexes:
                        index.create(conn, checkfirst=True)
                if sqlite_cache is not None:
                    conn.exec_driver_sql(f"PRAGMA cache_size={int(sqlite_cache)}")
                    conn.commit()
            except SQLAlchemyError:
                if done:  # otherwise the first error is the one worth seeing
                    raise

    return DemoSummary(customers=customers, products=len(products), orders=n_orders,
                       order_lines=n_lines)
