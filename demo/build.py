"""Generate the demo "synthetic city" and write it out as the departments would hold it.

The city (云州市, "Yunzhou") is invented, and so is everyone in it. Its districts carry
six-digit region codes under the province code 99, which GB/T 2260 does not assign to
any province: every generated ID number and credit code passes its checksum, as the
gateway demands, yet none can be a real person's ID number or a real company's code.

Everything is derived from one `random.Random(seed)`, and only through its `random()`
method, because that is the one draw whose sequence Python promises to keep across
versions (`randint`, `choice`, `gauss` and friends may change). Loops run over lists
and insertion-ordered dicts only, so the same seed gives the same city everywhere.

Usage: ``python -m demo.build --out demo/data --residents 10000 --seed 20261130``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from catalog.keys import credit_code_check_char, id_number_check_char
from demo.schema import DEPARTMENT_TABLES

__all__ = [
    "DEFAULT_RESIDENTS",
    "DEFAULT_SEED",
    "REFERENCE_DATE",
    "City",
    "build_city",
    "build_demo",
    "main",
    "write_department",
    "write_housing",
]

T = TypeVar("T")
Row = dict[str, Any]

DEFAULT_RESIDENTS = 10_000
DEFAULT_SEED = 20261130
# "Today" in the city. A fixed date rather than date.today(), so that a rebuild next
# month gives the same ages, the same retirees and therefore the same data.
REFERENCE_DATE = date(2026, 11, 30)
MIN_RESIDENTS = 10  # the showcase household alone has four members
CITY_NAME = "云州市"

# Statutory retirement ages before the 2025 reform (men 60, women workers 55): the
# reform phases in over 15 years, and the simpler rule keeps the data easy to explain.
RETIREMENT_AGE = {"M": 60, "F": 55}
# Monthly subsistence-allowance standard per person (CNY), invented for Yunzhou.
SUBSISTENCE_STANDARD = 1_320.0
_INSERT_BATCH = 2_000  # rows per executemany: large enough to be fast, small enough for any driver


# --- the city's geography -------------------------------------------------------------------


class District(NamedTuple):
    """A district of the city; street i is the seat of street office i."""

    code: str  # six-digit region code, the first six characters of ID numbers and credit codes
    name: str
    weight: int  # relative population
    streets: tuple[str, ...]
    offices: tuple[str, ...]


def _words(text: str) -> tuple[str, ...]:
    """Split a space-separated word list: long lists of Chinese words stay readable this way."""
    return tuple(text.split())


def _district(code: str, name: str, weight: int, streets: str, offices: str) -> District:
    return District(code, name, weight, _words(streets), _words(offices))


DISTRICTS: tuple[District, ...] = (
    _district("990102", "鼓楼区", 9, "鼓楼大街 钟楼路 府前街 文庙巷", "鼓楼街道 钟楼街道 府前街道 文庙街道"),
    _district("990103", "东湖区", 14, "东湖路 湖滨大道 望湖街 春晖路", "东湖街道 湖滨街道 望湖街道 春晖街道"),
    _district("990104", "西山区", 11, "西山大道 枫林路 石桥街 翠微路", "西山街道 枫林街道 石桥街道 翠微街道"),
    _district("990105", "南城区", 13, "南城大街 永定路 南苑路 长乐街", "南城街道 永定街道 南苑街道 长乐街道"),
    _district(
        "990106", "北苑区", 10, "北苑路 安康街 和平里大街 青年路", "北苑街道 安康街道 和平里街道 青年路街道"
    ),
    _district("990111", "临江区", 12, "临江大道 滨江路 码头街 渔港路", "临江街道 滨江街道 码头街道 渔港街道"),
    _district(
        "990112", "高新区", 16, "科技大道 创业路 软件园路 智慧街", "科技城街道 创业街道 软件园街道 智慧谷街道"
    ),
    _district("990121", "青石县", 8, "县前街 青石路 桃源路 河西街", "城关镇 青石镇 桃源镇 河西乡"),
)

# --- names ------------------------------------------------------------------------------------

# Common surnames, most frequent first; the weights below follow that order.
_SURNAMES = tuple("王李张刘陈杨黄赵吴周徐孙马朱胡郭何林高罗郑梁谢宋唐许韩冯邓曹彭曾肖田董潘袁蔡蒋余")
_SURNAME_WEIGHTS = tuple(max(2, 30 - i) for i in range(len(_SURNAMES)))
# Characters for given names of one or two characters.
_GIVEN = {
    "M": tuple("伟强磊军勇杰涛明超刚平辉鹏华飞鑫波斌宇浩凯健俊帆旭宁龙林阳志国建文东晨博子轩睿泽"),
    "F": tuple("芳娜敏静丽艳娟霞秀玲桂英萍红燕雪琳婷慧颖洁欣怡梦璐佳倩晶月雅萱涵思雨蕾悦妍诗琪欢"),
}

# --- businesses and jobs ----------------------------------------------------------------------

_TRADE_WORDS = _words(
    "恒信 华泰 瑞丰 鼎盛 新源 博远 嘉禾 宏达 金桥 同创 启明 安和 永兴 天成 致远 广聚 中和 汇通 盛世 合力 "
    "青云 长风 明德 百川"
)
_INDUSTRIES = _words(
    "科技 商贸 建筑工程 餐饮管理 物流 文化传媒 医药 机械制造 电子 食品 装饰工程 物业服务 信息技术 教育咨询 "
    "环保科技 农业开发"
)
_FUND_KINDS = _words("投资 股权投资 创业投资")
_SHOPS = _words("面馆 便利店 五金店 水果店 理发店 早餐店 干洗店 烟酒店 修车铺 花店 小吃店 裁缝铺")
_POSITIONS = {
    "individual": _words("店员 厨师 收银员 学徒 帮工 配送员"),
    "limited": _words(
        "职员 会计 销售代表 工程师 技术员 行政专员 项目经理 软件工程师 客服专员 司机 保安 部门经理"
    ),
    "partnership": _words("投资经理 分析师 会计 行政专员 合伙人助理"),
}
# Median monthly wage (CNY) by employer type; wages spread log-normally around it.
_MEDIAN_WAGE = {"individual": 4_200.0, "limited": 8_000.0, "partnership": 12_000.0}
_MIN_WAGE = 2_420.0
# Pension contribution base limits (CNY a month), roughly 60 % and 300 % of an average wage.
_CONTRIBUTION_BASE = (4_800.0, 24_000.0)
# Registered capital comes in round amounts in practice, so it is drawn from typical ones.
_CAPITAL = {
    "individual": ((20_000.0, 50_000.0, 100_000.0, 200_000.0, 500_000.0), (20, 30, 30, 15, 5)),
    "limited": (
        (100_000.0, 300_000.0, 500_000.0, 1_000_000.0, 2_000_000.0, 5_000_000.0, 10_000_000.0, 50_000_000.0),
        (10, 12, 18, 25, 12, 12, 8, 3),
    ),
    "partnership": (
        (1_000_000.0, 5_000_000.0, 10_000_000.0, 30_000_000.0, 100_000_000.0),
        (20, 30, 25, 15, 10),
    ),
}
# Employees go mostly to companies, rarely to one-person shops.
_EMPLOYER_WEIGHT = {"individual": 1.5, "limited": 30.0, "partnership": 6.0}

# --- health -----------------------------------------------------------------------------------

# The national immunisation programme's early doses: (vaccine, dose, age in days).
_CHILD_SCHEDULE = (
    ("乙肝疫苗", 1, 0),
    ("乙肝疫苗", 2, 30),
    ("乙肝疫苗", 3, 180),
    ("脊灰疫苗", 1, 60),
    ("脊灰疫苗", 2, 90),
    ("脊灰疫苗", 3, 120),
    ("脊灰疫苗", 4, 1460),
    ("百白破疫苗", 1, 90),
    ("百白破疫苗", 2, 120),
    ("百白破疫苗", 3, 150),
    ("百白破疫苗", 4, 545),
    ("麻腮风疫苗", 1, 240),
    ("麻腮风疫苗", 2, 545),
)
_CHILD_RECORDS_SINCE = date(2009, 1, 1)  # electronic immunisation records start here
_BIRTH_HOSPITAL = f"{CITY_NAME}妇幼保健院"


# --- deterministic random draws ----------------------------------------------------------------


class _Rng:
    """Random draws built only on `random.Random.random()`.

    Python guarantees that sequence for a given seed across versions, but not the
    algorithms behind `randint`, `choice`, `sample` or `gauss`; building them here keeps
    the city identical on every interpreter.
    """

    __slots__ = ("_random",)

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed).random

    def random(self) -> float:
        return self._random()

    def below(self, n: int) -> int:
        """An integer in [0, n)."""
        # min(): random() * n can round up to n for some n.
        return min(n - 1, int(self._random() * n))

    def randint(self, low: int, high: int) -> int:
        """An integer in [low, high], both ends included."""
        return low + self.below(high - low + 1)

    def chance(self, p: float) -> bool:
        return self._random() < p

    def choice(self, seq: Sequence[T]) -> T:
        return seq[self.below(len(seq))]

    def weighted(self, seq: Sequence[T], weights: Sequence[float]) -> T:
        cumulative: list[float] = []
        total = 0.0
        for w in weights:
            total += w
            cumulative.append(total)
        return seq[min(len(seq) - 1, bisect.bisect_right(cumulative, self._random() * total))]

    def normal(self) -> float:
        """An approximately standard normal draw (Irwin-Hall: exact arithmetic, no libm)."""
        return sum(self._random() for _ in range(12)) - 6.0

    def sample(self, seq: Sequence[T], k: int) -> list[T]:
        """k distinct items, by a partial Fisher-Yates shuffle of a copy."""
        pool = list(seq)
        k = min(k, len(pool))
        for i in range(k):
            j = i + self.below(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]

    def date_between(self, first: date, last: date) -> date:
        """A date in [first, last]; `first` when the range is empty."""
        span = (last - first).days
        return first if span <= 0 else first + timedelta(days=self.randint(0, span))


def _add_years(day: date, years: int) -> date:
    """The same calendar day `years` later; 29 February becomes 28 February."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def _age(birth: date, on: date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _years_between(first: date, last: date) -> int:
    return max(0, _age(first, last))


# --- the generated entities ----------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Person:
    id_number: str
    name: str
    surname: str
    gender: str
    birth_date: date
    age: int
    relation: str
    household: _Household
    current_job: Row | None = None  # the employment row with end_date NULL
    last_job: Row | None = None  # the most recent ended job of someone without a current one
    first_job_start: date | None = None


@dataclass(slots=True, eq=False)
class _Household:
    household_id: str
    district: District
    office: int  # index into district.offices / district.streets
    address: str
    showcase: bool
    members: list[_Person] = field(default_factory=list)


@dataclass
class City:
    """The generated city.

    `tables` maps department -> table -> rows, with Python `date` objects for dates and
    columns named exactly as in `demo.schema`. `housing` holds the Housing department's
    records JSON-ready (dates as ISO strings). `showcase` names keys for the README
    examples (see `build_city`).
    """

    tables: dict[str, dict[str, list[Row]]]
    housing: list[Row]
    showcase: dict[str, str]

    def counts(self) -> dict[str, int]:
        """Rows per table (and `property` for housing), in department order."""
        out = {name: len(rows) for department in self.tables.values() for name, rows in department.items()}
        out["property"] = len(self.housing)
        return out


class _CityBuilder:
    """Generates the city step by step; each step only reads what earlier steps made."""

    def __init__(self, residents: int, seed: int) -> None:
        self.rng = _Rng(seed)
        self.target = residents
        self.households: list[_Household] = []
        self.people: list[_Person] = []
        self.used_id_prefixes: set[str] = set()  # membership tests only, never iterated
        self.used_credit_codes: set[str] = set()
        self.used_business_names: set[str] = set()
        self.businesses: list[Row] = []
        self.employment: list[Row] = []
        self.pension: list[Row] = []
        self.unemployment: list[Row] = []
        self.medical: list[Row] = []
        self.vaccination: list[Row] = []
        self.properties: list[Row] = []
        self.cases: list[Row] = []
        self.district_weights = [d.weight for d in DISTRICTS]

    # -- people and households -----------------------------------------------------------

    def pick_district(self) -> District:
        return self.rng.weighted(DISTRICTS, self.district_weights)

    def given_name(self, gender: str, age: int) -> str:
        chars = _GIVEN[gender]
        # Two-character given names became the norm for younger generations.
        if self.rng.chance(0.8 if age < 40 else 0.55):
            return self.rng.choice(chars) + self.rng.choice(chars)
        return self.rng.choice(chars)

    def birth_date(self, age: int) -> date:
        """A birth date that makes the person exactly `age` on REFERENCE_DATE."""
        latest = _add_years(REFERENCE_DATE, -age)
        return latest - timedelta(days=self.rng.randint(0, 364))

    def id_number(self, region: str, birth: date, gender: str) -> str:
        """A valid, unused GB 11643 number; the sequence's last digit is odd for men, even for women."""
        stem = f"{region}{birth:%Y%m%d}"
        parity = 1 if gender == "M" else 0
        start = self.rng.below(500)
        # Walk all 500 sequence numbers of the right parity from a random start, so a free
        # one is always found without an unbounded retry loop.
        for step in range(500):
            first17 = f"{stem}{((start + step) % 500) * 2 + parity:03d}"
            if first17 not in self.used_id_prefixes:
                self.used_id_prefixes.add(first17)
                return first17 + id_number_check_char(first17)
        raise RuntimeError(f"all sequence numbers used for region {region} on {birth}")

    def plan_household(self, size: int) -> list[tuple[str, int, str]]:
        """(relation, age, gender) for each member; the head first."""
        rng = self.rng
        band = rng.weighted(
            ((22, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 85)), (12, 22, 20, 18, 15, 10)
        )
        head_age = rng.randint(*band)
        if size >= 3:
            head_age = max(head_age, 28)  # a 22-year-old rarely heads a family of five
        head_gender = "M" if rng.chance(0.62) else "F"
        plan = [("head", head_age, head_gender)]
        slots = size - 1
        if slots and rng.chance(0.9 if size >= 3 else 0.75):
            # Husbands are on average a couple of years older than their wives.
            offset = rng.randint(-6, 3) if head_gender == "M" else rng.randint(-2, 7)
            plan.append(("spouse", min(95, max(20, head_age + offset)), "F" if head_gender == "M" else "M"))
            slots -= 1
        parents = 0
        if slots and head_age <= 60 and rng.chance(0.35 if size >= 4 else 0.15):
            parents = min(slots, 2 if rng.chance(0.5) else 1)
        others = 1 if slots - parents > 0 and rng.chance(0.04) else 0
        children = slots - parents - others
        if parents:
            base = min(95, head_age + rng.randint(22, 34))
            if parents == 2:
                plan.append(("parent", min(99, base + rng.randint(0, 4)), "M"))
                plan.append(("parent", base, "F"))
            else:
                plan.append(("parent", base, "F" if rng.chance(0.6) else "M"))  # mothers outlive fathers
        for _ in range(children):
            plan.append(("child", head_age - rng.randint(22, min(40, head_age)), rng.choice(("M", "F"))))
        for _ in range(others):
            plan.append(("other", min(95, max(16, head_age + rng.randint(-10, 10))), rng.choice(("M", "F"))))
        return plan

    def add_household(self, plan: list[tuple[str, int, str]], showcase: bool = False) -> _Household:
        rng = self.rng
        district = self.pick_district()
        office = rng.below(len(district.offices))
        address = (
            f"{CITY_NAME}{district.name}{district.streets[office]}{rng.randint(1, 399)}号"
            f"{rng.randint(1, 30)}号楼{rng.randint(1, 6)}单元{rng.randint(1, 28)}{rng.randint(1, 4):02d}室"
        )
        household = _Household(
            household_id=f"H{district.code}{len(self.households) + 1:07d}",
            district=district,
            office=office,
            address=address,
            showcase=showcase,
        )
        self.households.append(household)
        head_surname = rng.weighted(_SURNAMES, _SURNAME_WEIGHTS)
        spouse_surname = rng.weighted(_SURNAMES, _SURNAME_WEIGHTS)
        # Children usually take the father's surname; Chinese wives keep their own.
        head_is_male = plan[0][2] == "M"
        has_spouse = any(relation == "spouse" for relation, _, _ in plan)
        child_surname = head_surname if head_is_male or not has_spouse or rng.chance(0.2) else spouse_surname
        names_taken: list[str] = []
        for relation, age, gender in plan:
            if relation == "spouse":
                surname = spouse_surname
            elif relation == "child":
                surname = child_surname
            elif relation in ("parent", "other") and gender == "M":
                surname = head_surname  # the head's father or brother
            elif relation == "head":
                surname = head_surname
            else:
                surname = rng.weighted(_SURNAMES, _SURNAME_WEIGHTS)
            birth = self.birth_date(age)
            # Most people were first registered in the district they live in now.
            region = district.code if rng.chance(0.8) else self.pick_district().code
            # Nobody shares a full name with someone in their own household (a son is not
            # named after his father); a bounded retry keeps this deterministic.
            name = surname + self.given_name(gender, age)
            for _ in range(20):
                if name not in names_taken:
                    break
                name = surname + self.given_name(gender, age)
            names_taken.append(name)
            person = _Person(
                id_number=self.id_number(region, birth, gender),
                name=name,
                surname=surname,
                gender=gender,
                birth_date=birth,
                age=age,
                relation=relation,
                household=household,
            )
            household.members.append(person)
            self.people.append(person)
        return household

    def make_people(self) -> None:
        # The showcase household comes first and is built to order: a couple in their
        # forties, a teenager and the head's retired father. Later steps give the head a
        # shop and the home, the spouse a job and the father a pension, and file the
        # head's allowance application: the case the README's cross-check uncovers.
        self.add_household(
            [
                ("head", 46, "M"),
                ("spouse", 44, "F"),
                ("child", 16, self.rng.choice(("M", "F"))),
                ("parent", 72, "M"),
            ],
            showcase=True,
        )
        while len(self.people) < self.target:
            size = self.rng.weighted((1, 2, 3, 4, 5, 6), (17, 30, 26, 15, 8, 4))
            size = min(size, self.target - len(self.people))  # land exactly on the requested count
            self.add_household(self.plan_household(size))

    def resident_rows(self) -> list[Row]:
        rows = []
        for person in self.people:
            household = person.household
            born_here = person.id_number[:6] == household.district.code
            if born_here and (person.relation == "child" or self.rng.chance(0.6)):
                registered = person.birth_date + timedelta(days=self.rng.randint(7, 60))
            else:
                # Moved in as an adult (or, for a child, some time after birth).
                earliest = person.birth_date if person.age < 18 else _add_years(person.birth_date, 18)
                registered = self.rng.date_between(max(earliest, date(1985, 1, 1)), REFERENCE_DATE)
            rows.append(
                {
                    "id_number": person.id_number,
                    "name": person.name,
                    "gender": person.gender,
                    "birth_date": person.birth_date,
                    "address": household.address,
                    "district": household.district.name,
                    "household_id": household.household_id,
                    "relation": person.relation,
                    "registered_on": min(registered, REFERENCE_DATE),
                }
            )
        return rows

    # -- market regulation -----------------------------------------------------------------

    def credit_code(self, region: str) -> str:
        """A valid, unused GB 32100 code: '9' (market regulator), '1' (enterprise), region, org code."""
        while True:
            body = "".join(str(self.rng.below(10)) for _ in range(8))
            # The ninth character of the organisation code is its own GB 11714 check.
            check = 11 - sum(int(c) * w for c, w in zip(body, (3, 7, 9, 10, 5, 8, 4, 2), strict=True)) % 11
            org = body + ("X" if check == 10 else "0" if check == 11 else str(check))
            first17 = f"91{region}{org}"
            if first17 not in self.used_credit_codes:
                self.used_credit_codes.add(first17)
                return first17 + credit_code_check_char(first17)

    def business_name(self, kind: str, district: District, rep: _Person) -> str:
        rng = self.rng
        name = ""
        for _ in range(50):  # registries refuse duplicate names, so retry until unused
            if kind == "individual":
                name = f"{district.name}{rep.surname}记{rng.choice(_SHOPS)}"
            elif kind == "limited":
                name = f"云州{rng.choice(_TRADE_WORDS)}{rng.choice(_INDUSTRIES)}有限公司"
            else:
                fund = rng.choice(_FUND_KINDS)
                name = f"云州{rng.choice(_TRADE_WORDS)}{fund}合伙企业（有限合伙）"
            if name not in self.used_business_names:
                break
        else:
            name = (
                f"{name[:-4]}（{district.name}）{name[-4:]}"
                if kind == "limited"
                else f"{name}（{district.name}）"
            )
        self.used_business_names.add(name)
        return name

    def add_business(self, rep: _Person, kind: str | None = None, status: str | None = None) -> Row:
        rng = self.rng
        district = rep.household.district if rng.chance(0.7) else self.pick_district()
        kind = kind or rng.weighted(("individual", "limited", "partnership"), (55, 38, 7))
        status = status or rng.weighted(("active", "revoked", "cancelled"), (82, 6, 12))
        amounts, weights = _CAPITAL[kind]
        established = rng.date_between(
            max(_add_years(rep.birth_date, 20), date(1992, 1, 1)), REFERENCE_DATE - timedelta(days=30)
        )
        row: Row = {
            "credit_code": self.credit_code(district.code),
            "name": self.business_name(kind, district, rep),
            "legal_rep_id_number": rep.id_number,
            "type": kind,
            "status": status,
            "registered_capital": rng.weighted(amounts, weights),
            "established_on": established,
            "address": f"{CITY_NAME}{district.name}{rng.choice(district.streets)}{rng.randint(1, 599)}号",
            "district": district.name,
        }
        self.businesses.append(row)
        return row

    def make_businesses(self, showcase_head: _Person) -> None:
        adults = sum(1 for p in self.people if p.age >= 18)
        wanted = max(1, round(0.05 * adults))
        eligible = [p for p in self.people if 23 <= p.age <= 70 and p is not showcase_head]
        # The showcase applicant runs a corner shop that is still trading.
        self.add_business(showcase_head, kind="individual", status="active")
        for rep in self.rng.sample(eligible, wanted - 1):
            self.add_business(rep)
            if self.rng.chance(0.12):
                self.add_business(rep)

    # -- human resources and social security ----------------------------------------------------

    def add_job(self, person: _Person, employer: Row, start: date, end: date | None) -> Row:
        kind = employer["type"]
        wage = _MEDIAN_WAGE[kind] * math.exp(0.45 * self.rng.normal())
        row: Row = {
            "id": len(self.employment) + 1,
            "id_number": person.id_number,
            "employer_credit_code": employer["credit_code"],
            "employer_name": employer["name"],
            "position": self.rng.choice(_POSITIONS[kind]),
            "start_date": start,
            "end_date": end,
            "monthly_wage": float(round(max(_MIN_WAGE, wage) / 10) * 10),
        }
        self.employment.append(row)
        if person.first_job_start is None or start < person.first_job_start:
            person.first_job_start = start
        return row

    def make_employment(self, showcase_spouse: _Person) -> None:
        rng = self.rng
        active = [b for b in self.businesses if b["status"] == "active"]
        active_weights = [_EMPLOYER_WEIGHT[b["type"]] for b in active]
        limited = [b for b in active if b["type"] == "limited"] or active
        all_weights = [_EMPLOYER_WEIGHT[b["type"]] for b in self.businesses]
        for person in self.people:
            if not 18 <= person.age < RETIREMENT_AGE[person.gender]:
                continue
            adult_on = _add_years(person.birth_date, 18)
            forced = person is showcase_spouse
            if forced or rng.chance(0.2 if person.age <= 21 else 0.6):
                employer = rng.choice(limited) if forced else rng.weighted(active, active_weights)
                earliest = max(employer["established_on"], adult_on, _add_years(REFERENCE_DATE, -15))
                start = rng.date_between(earliest, REFERENCE_DATE - timedelta(days=14))
                # Some have an earlier job that ended before this one began.
                if (start - adult_on).days > 3 * 365 and rng.chance(0.35):
                    previous = rng.weighted(self.businesses, all_weights)
                    prev_first = max(previous["established_on"], adult_on)
                    prev_last_start = start - timedelta(days=365)
                    if prev_first < prev_last_start:
                        prev_start = rng.date_between(prev_first, prev_last_start)
                        prev_end = rng.date_between(
                            prev_start + timedelta(days=180), start - timedelta(days=1)
                        )
                        self.add_job(person, previous, prev_start, prev_end)
                person.current_job = self.add_job(person, employer, start, None)
            elif person.age >= 23 and rng.chance(0.3):
                # Out of work now, after a job that ended in the last three years.
                employer = rng.weighted(self.businesses, all_weights)
                end = rng.date_between(_add_years(REFERENCE_DATE, -3), REFERENCE_DATE - timedelta(days=10))
                first = max(employer["established_on"], adult_on)
                if first < end - timedelta(days=180):
                    start = rng.date_between(first, end - timedelta(days=180))
                    person.last_job = self.add_job(person, employer, start, end)

    def make_social_security(self, showcase_parent: _Person) -> None:
        rng = self.rng
        for person in self.people:
            retire_age = RETIREMENT_AGE[person.gender]
            job = person.current_job
            if person.age >= retire_age and (person is showcase_parent or rng.chance(0.88)):
                years = rng.randint(15, max(15, retire_age - 20))
                amount = max(1_200.0, 2_200.0 + 110.0 * years + 600.0 * rng.normal())
                self.add_pension(
                    person, "receiving", round(amount, 2), _add_years(person.birth_date, retire_age), years
                )
            elif job is not None and person.first_job_start is not None and rng.chance(0.85):
                # For contributors the amount is the contribution base: the wage, held between
                # the floor and ceiling the bureau sets (the catalogue documents it so).
                since = person.first_job_start
                low, high = _CONTRIBUTION_BASE
                self.add_pension(
                    person,
                    "contributing",
                    min(high, max(low, job["monthly_wage"])),
                    since,
                    _years_between(since, REFERENCE_DATE),
                )
            elif person.last_job is not None and person.first_job_start is not None and rng.chance(0.5):
                since = person.first_job_start
                self.add_pension(
                    person, "suspended", 0.0, since, _years_between(since, person.last_job["end_date"])
                )
            # Unemployment insurance: insured while working, claiming or ended after a job loss.
            if job is not None and rng.chance(0.5):
                self.add_unemployment(person, "insured", 0.0, job["start_date"], None)
            elif person.last_job is not None and rng.chance(0.65):
                start = min(REFERENCE_DATE, person.last_job["end_date"] + timedelta(days=rng.randint(7, 45)))
                end = start + timedelta(days=30 * rng.randint(3, 24))
                benefit = float(rng.randint(180, 230) * 10)
                if end <= REFERENCE_DATE:
                    self.add_unemployment(person, "ended", benefit, start, end)
                else:
                    self.add_unemployment(person, "claiming", benefit, start, None)

    def add_pension(self, person: _Person, status: str, amount: float, start: date, years: int) -> None:
        self.pension.append(
            {
                "id": len(self.pension) + 1,
                "id_number": person.id_number,
                "status": status,
                "monthly_amount": amount,
                "start_date": start,
                "contribution_years": years,
            }
        )

    def add_unemployment(
        self, person: _Person, status: str, benefit: float, start: date, end: date | None
    ) -> None:
        self.unemployment.append(
            {
                "id": len(self.unemployment) + 1,
                "id_number": person.id_number,
                "status": status,
                "benefit_amount": benefit,
                "start_date": start,
                "end_date": end,
            }
        )

    # -- health ------------------------------------------------------------------------------

    def make_health(self, pension_status: dict[str, str]) -> None:
        rng = self.rng
        for person in self.people:
            household = person.household
            clinic = household.district.offices[household.office]
            site = (
                f"{clinic}卫生院"
                if clinic.endswith(("镇", "乡"))
                else f"{household.district.name}{clinic}社区卫生服务中心"
            )
            if rng.chance(0.96):
                receiving = pension_status.get(person.id_number) == "receiving"
                if person.current_job is not None or receiving:
                    scheme, status = "employee", "active"
                    start = (
                        person.current_job["start_date"]
                        if person.current_job
                        else _add_years(person.birth_date, RETIREMENT_AGE[person.gender])
                    )
                else:
                    scheme, status = "resident", "lapsed" if rng.chance(0.08) else "active"
                    start = rng.date_between(max(person.birth_date, date(2008, 1, 1)), REFERENCE_DATE)
                self.medical.append(
                    {
                        "id": len(self.medical) + 1,
                        "id_number": person.id_number,
                        "scheme": scheme,
                        "status": status,
                        "start_date": start,
                    }
                )
            self.add_vaccinations(person, site)

    def add_vaccination(self, person: _Person, vaccine: str, dose: int, on: date, site: str) -> None:
        self.vaccination.append(
            {
                "id": len(self.vaccination) + 1,
                "id_number": person.id_number,
                "vaccine": vaccine,
                "dose": dose,
                "vaccinated_on": on,
                "site": site,
            }
        )

    def add_vaccinations(self, person: _Person, site: str) -> None:
        rng = self.rng
        birth = person.birth_date
        if birth >= _CHILD_RECORDS_SINCE:
            missed: set[str] = set()  # a missed dose ends that vaccine's series; membership only
            for vaccine, dose, age_days in _CHILD_SCHEDULE:
                on = birth + timedelta(days=age_days + rng.randint(0, 14))
                if on > REFERENCE_DATE or vaccine in missed:
                    continue
                if rng.chance(0.03):
                    missed.add(vaccine)
                    continue
                self.add_vaccination(person, vaccine, dose, on, _BIRTH_HOSPITAL if age_days == 0 else site)
        # COVID-19: a 2021 campaign for those aged 3 and over, boosters into 2022.
        if birth <= date(2018, 1, 1) and rng.chance(0.8):
            first = rng.date_between(date(2021, 3, 1), date(2021, 9, 30))
            self.add_vaccination(person, "新冠病毒疫苗", 1, first, site)
            if rng.chance(0.92):
                self.add_vaccination(
                    person, "新冠病毒疫苗", 2, first + timedelta(days=rng.randint(21, 56)), site
                )
                if rng.chance(0.6):
                    booster = rng.date_between(date(2021, 12, 1), date(2022, 6, 30))
                    self.add_vaccination(person, "新冠病毒疫苗", 3, booster, site)
        # Seasonal influenza, taken up most by the old and the very young.
        for season in (2023, 2024, 2025, 2026):
            on = rng.date_between(date(season, 9, 15), min(date(season, 12, 15), REFERENCE_DATE))
            age_then = _age(birth, on)
            if (on - birth).days >= 180 and rng.chance(0.35 if age_then >= 60 or age_then <= 6 else 0.12):
                self.add_vaccination(person, "流感疫苗", 1, on, site)

    # -- housing -----------------------------------------------------------------------------

    def make_housing(self) -> None:
        rng = self.rng
        for household in self.households:
            if not (household.showcase or rng.chance(0.25)):
                continue
            head = household.members[0]
            spouse = next((m for m in household.members if m.relation == "spouse"), None)
            count = 1 if household.showcase else rng.weighted((1, 2, 3, 4), (75, 17, 6, 2))
            for i in range(count):
                owner = head if household.showcase or spouse is None or rng.chance(0.7) else spouse
                if i == 0:  # the home they live in
                    usage, district, address = "residential", household.district, household.address
                else:
                    district = self.pick_district()
                    usage = "commercial" if rng.chance(0.25) else "residential"
                    address = (
                        f"{CITY_NAME}{district.name}{rng.choice(district.streets)}{rng.randint(1, 399)}号"
                        + (
                            f"{rng.randint(1, 30)}号楼{rng.randint(1, 28)}{rng.randint(1, 4):02d}室"
                            if usage == "residential"
                            else f"{rng.randint(1, 3)}层{rng.randint(1, 20):02d}号商铺"
                        )
                    )
                median, low, high = (88.0, 30.0, 300.0) if usage == "residential" else (120.0, 20.0, 600.0)
                area = min(high, max(low, median * math.exp(0.3 * rng.normal())))
                acquired = rng.date_between(
                    max(_add_years(owner.birth_date, 22), date(1995, 1, 1)),
                    REFERENCE_DATE - timedelta(days=7),
                )
                recent = (REFERENCE_DATE - acquired).days < 25 * 365
                self.properties.append(
                    {
                        "property_id": f"P{district.code}{len(self.properties) + 1:07d}",
                        "owner_id_number": owner.id_number,
                        "address": address,
                        "district": district.name,
                        "area_sqm": round(area, 2),
                        "usage": usage,
                        "acquired_on": acquired.isoformat(),
                        "mortgaged": household.showcase or (recent and rng.chance(0.5)),
                    }
                )

    # -- civil affairs -----------------------------------------------------------------------

    def make_cases(self, pensions: dict[str, Row], claims: dict[str, Row]) -> None:
        rng = self.rng
        income: dict[str, float] = {}  # household_id -> monthly income per member
        for household in self.households:
            total = 0.0
            for m in household.members:
                if m.current_job is not None:
                    total += m.current_job["monthly_wage"]
                pension = pensions.get(m.id_number)
                if pension is not None and pension["status"] == "receiving":
                    total += pension["monthly_amount"]
                claim = claims.get(m.id_number)
                if claim is not None and claim["status"] == "claiming":
                    total += claim["benefit_amount"]
            income[household.household_id] = total / len(household.members)
        wanted = max(1, round(0.03 * len(self.households)))
        # Applicants come from low-income households (below 1.3 times the standard per member).
        poor = [
            h
            for h in self.households
            if not h.showcase and income[h.household_id] < 1.3 * SUBSISTENCE_STANDARD
        ]
        chosen = rng.sample(poor, wanted - 1)
        chosen.sort(key=lambda h: h.household_id)
        showcase = self.households[0]
        for household in [showcase, *chosen]:
            if household.showcase:
                status = "applied"
            elif income[household.household_id] < SUBSISTENCE_STANDARD:
                status = rng.weighted(("approved", "applied", "rejected", "terminated"), (64, 14, 8, 14))
            else:
                # Above the standard: the means test turns most of these down.
                status = rng.weighted(("applied", "rejected"), (25, 75))
            if status == "applied":
                applied, decided = REFERENCE_DATE - timedelta(days=rng.randint(3, 45)), None
            else:
                applied = REFERENCE_DATE - timedelta(days=rng.randint(60, 2_000))
                decided = applied + timedelta(days=rng.randint(15, 40))
            allowance = None
            if status in ("approved", "terminated"):
                gap = (SUBSISTENCE_STANDARD - income[household.household_id]) * len(household.members)
                allowance = round(max(100.0, gap), 2)  # the allowance tops income up to the standard
            self.cases.append(
                {
                    "case_id": f"DB{household.district.code}{len(self.cases) + 1:06d}",
                    "applicant_id_number": household.members[0].id_number,
                    "household_id": household.household_id,
                    "status": status,
                    "monthly_allowance": allowance,
                    "applied_on": applied,
                    "decided_on": decided,
                    "street_office": household.district.offices[household.office],
                }
            )

    # -- assembly ----------------------------------------------------------------------------

    def build(self) -> City:
        self.make_people()
        head, spouse, _child, parent = self.households[0].members
        residents = self.resident_rows()
        self.make_businesses(head)
        self.make_employment(spouse)
        self.make_social_security(parent)
        pensions = {row["id_number"]: row for row in self.pension}
        claims = {row["id_number"]: row for row in self.unemployment}
        self.make_health({key: row["status"] for key, row in pensions.items()})
        self.make_housing()
        self.make_cases(pensions, claims)
        tables: dict[str, dict[str, list[Row]]] = {
            "psb": {"resident": residents},
            "hrss": {
                "employment": self.employment,
                "pension": self.pension,
                "unemployment_insurance": self.unemployment,
            },
            "mr": {"business": self.businesses},
            "health": {"medical_insurance": self.medical, "vaccination": self.vaccination},
            "civil": {"subsistence_case": self.cases},
        }
        return City(tables=tables, housing=self.properties, showcase=select_showcase(tables, self.properties))


def select_showcase(tables: dict[str, dict[str, list[Row]]], housing: list[Row]) -> dict[str, str]:
    """Pick the README's example keys from the data itself.

    The first `applied` subsistence case whose household has at least three members,
    one of them currently employed, one with a pension, one owning property and one
    legal representative of a business: the cross-department check the gateway exists
    for. The generator builds such a household on purpose, so one is always found.
    """
    residents = tables["psb"]["resident"]
    members: dict[str, list[str]] = {}
    district: dict[str, str] = {}
    for row in residents:
        members.setdefault(row["household_id"], []).append(row["id_number"])
        district[row["household_id"]] = row["district"]
    employed = {r["id_number"] for r in tables["hrss"]["employment"] if r["end_date"] is None}
    pensioned = {r["id_number"] for r in tables["hrss"]["pension"]}
    owners = {r["owner_id_number"] for r in housing}
    businesses: dict[str, list[Row]] = {}
    for row in tables["mr"]["business"]:
        businesses.setdefault(row["legal_rep_id_number"], []).append(row)
    for case in tables["civil"]["subsistence_case"]:
        people = members.get(case["household_id"], [])
        if case["status"] != "applied" or len(people) < 3:
            continue
        if not (any(p in employed for p in people) and any(p in pensioned for p in people)):
            continue
        owned = [b for p in people for b in businesses.get(p, [])]
        if owned and any(p in owners for p in people):
            owned.sort(key=lambda b: (b["status"] != "active", b["credit_code"]))  # prefer a trading one
            return {
                "applicant_id_number": case["applicant_id_number"],
                "household_id": case["household_id"],
                "case_id": case["case_id"],
                "credit_code": owned[0]["credit_code"],
                "district": district[case["household_id"]],
            }
    raise RuntimeError("no subsistence case fits the showcase; the generator should have built one")


def build_city(residents: int = DEFAULT_RESIDENTS, seed: int = DEFAULT_SEED) -> City:
    """Generate the city: exactly `residents` people (at least MIN_RESIDENTS), from `seed`."""
    if residents < MIN_RESIDENTS:
        raise ValueError(f"residents must be at least {MIN_RESIDENTS}, got {residents}")
    return _CityBuilder(residents, seed).build()


# --- writing ------------------------------------------------------------------------------------


def _engine_url(url: str) -> URL:
    """The URL to connect with: MySQL/MariaDB connections are asked for utf8mb4 unless told otherwise.

    The tables are created utf8mb4, but a connection left at the server's default
    character set would still mangle the Chinese text on its way in.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() in ("mysql", "mariadb") and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


async def write_department(city: City, department: str, url: str) -> None:
    """(Re)create `department`'s tables at the async SQLAlchemy `url` and load its rows.

    Existing tables of the department are dropped first, so the call can be repeated.
    Everything runs in one transaction: on SQLite that is what makes it fast, and
    elsewhere a failed load does not leave half a department behind (where the
    database supports transactional DDL).
    """
    metadata = DEPARTMENT_TABLES.get(department)
    if metadata is None:
        raise ValueError(f"unknown department {department!r}; expected one of {', '.join(DEPARTMENT_TABLES)}")
    rows_by_table = city.tables.get(department, {})
    engine = create_async_engine(_engine_url(url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            await conn.run_sync(metadata.create_all)
            for table in metadata.sorted_tables:
                rows = rows_by_table.get(table.name, [])
                for start in range(0, len(rows), _INSERT_BATCH):
                    await conn.execute(table.insert(), rows[start : start + _INSERT_BATCH])
    finally:
        await engine.dispose()


def _write_json(path: Path, payload: object) -> None:
    """Write via a temporary file and rename, so a running service never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_housing(city: City, path: Path) -> None:
    """Write the Housing department's records as ``{"properties": [...]}``."""
    _write_json(path, {"properties": city.housing})


def _replace_database(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    # A journal left beside the old file by an interrupted writer would be replayed into
    # the new one, so it goes too.
    for suffix in ("-journal", "-wal", "-shm"):
        final.with_name(final.name + suffix).unlink(missing_ok=True)


async def build_demo(out_dir: Path, residents: int = DEFAULT_RESIDENTS, seed: int = DEFAULT_SEED) -> City:
    """Generate the city and write every department's data into `out_dir`.

    Writes psb/hrss/mr/health/civil ``.sqlite``, ``housing.json`` and ``showcase.json``.
    Each database is built under a temporary name and renamed over the old one: a fresh
    file carries no tables from an older schema, and a gateway that has the old file
    open keeps reading it undisturbed until it reconnects.
    """
    # Generation and file housekeeping are blocking work: they run in a worker thread so
    # a caller's event loop (say, a server rebuilding its demo data) keeps serving.
    out = await asyncio.to_thread(out_dir.resolve)
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    city = await asyncio.to_thread(build_city, residents, seed)

    async def write_sqlite(department: str) -> None:
        final = out / f"{department}.sqlite"
        tmp = out / f"{department}.sqlite.tmp"
        await asyncio.to_thread(tmp.unlink, missing_ok=True)
        await write_department(city, department, f"sqlite+aiosqlite:///{tmp}")
        await asyncio.to_thread(_replace_database, tmp, final)

    # aiosqlite runs each database in its own thread, so the five files load side by side.
    await asyncio.gather(*(write_sqlite(department) for department in DEPARTMENT_TABLES))
    await asyncio.to_thread(write_housing, city, out / "housing.json")
    await asyncio.to_thread(_write_json, out / "showcase.json", city.showcase)
    return city


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m demo.build", description="Generate the hutong demo city into a data directory."
    )
    parser.add_argument(
        "--out", type=Path, default=Path("demo/data"), help="output directory (default demo/data)"
    )
    parser.add_argument("--residents", type=int, default=DEFAULT_RESIDENTS, help="number of people")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    args = parser.parse_args(argv)
    if args.residents < MIN_RESIDENTS:
        parser.error(f"--residents must be at least {MIN_RESIDENTS}")
    started = time.perf_counter()
    city = asyncio.run(build_demo(args.out, args.residents, args.seed))
    elapsed = time.perf_counter() - started
    households = len({row["household_id"]: None for row in city.tables["psb"]["resident"]})
    counts = " ".join(f"{name}={count}" for name, count in city.counts().items())
    print(f"built {args.out}: households={households} {counts} in {elapsed:.2f}s (seed {args.seed})")


if __name__ == "__main__":
    main()
