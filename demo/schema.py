"""Table definitions of the demo departments, one SQLAlchemy `MetaData` per department.

Each department keeps its own database in the demo (as it would in a real city), so
each gets its own `MetaData`: `create_all` on one department never creates another
department's tables. Types are the portable subset that SQLite, PostgreSQL and
MariaDB all map cleanly; every `String` has a length because MariaDB cannot index
an unbounded text column. Join keys (ID numbers, household numbers, credit codes)
are indexed because the gateway joins and batch-looks-up on exactly those columns.
"""

from __future__ import annotations

from sqlalchemy import Column, Date, Float, Integer, MetaData, String, Table

__all__ = [
    "BUSINESS_STATUSES",
    "BUSINESS_TYPES",
    "CASE_STATUSES",
    "DEPARTMENT_TABLES",
    "GENDERS",
    "HOUSING_FIELDS",
    "HOUSING_USAGES",
    "MEDICAL_SCHEMES",
    "MEDICAL_STATUSES",
    "PENSION_STATUSES",
    "RELATIONS",
    "UNEMPLOYMENT_STATUSES",
]

# Code lists shared by the generator and its tests, so the two cannot drift apart.
GENDERS = ("M", "F")
RELATIONS = ("head", "spouse", "child", "parent", "other")
PENSION_STATUSES = ("contributing", "receiving", "suspended")
UNEMPLOYMENT_STATUSES = ("insured", "claiming", "ended")
BUSINESS_TYPES = ("individual", "limited", "partnership")
BUSINESS_STATUSES = ("active", "revoked", "cancelled")
MEDICAL_SCHEMES = ("employee", "resident")
MEDICAL_STATUSES = ("active", "lapsed")
CASE_STATUSES = ("applied", "approved", "rejected", "terminated")
HOUSING_USAGES = ("residential", "commercial")

# Housing is a REST source, not a table: its record shape is declared here anyway so the
# generator and `demo.housing_service` share one definition. The kind decides how the
# service coerces query-string values ("date" values are ISO strings, compared as text).
HOUSING_FIELDS: dict[str, str] = {
    "property_id": "str",
    "owner_id_number": "str",
    "address": "str",
    "district": "str",
    "area_sqm": "float",
    "usage": "str",
    "acquired_on": "date",
    "mortgaged": "bool",
}

# MariaDB servers may still default to latin1, which cannot store Chinese names; the
# option is ignored by the other dialects.
_TABLE_OPTIONS = {"mysql_charset": "utf8mb4"}

# Lengths of the keys: 18 for GB 11643 ID numbers and GB 32100 credit codes.
_ID = 18
_CREDIT = 18
_HOUSEHOLD = 16


def _id_number_column(name: str = "id_number") -> Column[str]:
    """A non-null, indexed resident ID number column (a join key into psb.resident)."""
    return Column(name, String(_ID), nullable=False, index=True)


def _surrogate_id() -> Column[int]:
    """An integer primary key assigned by the generator, so no sequence or AUTO_INCREMENT is needed."""
    return Column("id", Integer, primary_key=True, autoincrement=False)


psb = MetaData()
Table(
    "resident",
    psb,
    Column("id_number", String(_ID), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("gender", String(1), nullable=False),
    Column("birth_date", Date, nullable=False),
    Column("address", String(200), nullable=False),
    Column("district", String(32), nullable=False),
    Column("household_id", String(_HOUSEHOLD), nullable=False, index=True),
    Column("relation", String(16), nullable=False),
    Column("registered_on", Date, nullable=False),
    **_TABLE_OPTIONS,
)

hrss = MetaData()
Table(
    "employment",
    hrss,
    _surrogate_id(),
    _id_number_column(),
    Column("employer_credit_code", String(_CREDIT), nullable=False, index=True),
    Column("employer_name", String(128), nullable=False),
    Column("position", String(64), nullable=False),
    Column("start_date", Date, nullable=False),
    Column("end_date", Date, nullable=True),  # NULL: the job is current
    Column("monthly_wage", Float, nullable=False),
    **_TABLE_OPTIONS,
)
Table(
    "pension",
    hrss,
    _surrogate_id(),
    _id_number_column(),
    Column("status", String(16), nullable=False),
    Column("monthly_amount", Float, nullable=False),
    Column("start_date", Date, nullable=False),
    Column("contribution_years", Integer, nullable=False),
    **_TABLE_OPTIONS,
)
Table(
    "unemployment_insurance",
    hrss,
    _surrogate_id(),
    _id_number_column(),
    Column("status", String(16), nullable=False),
    Column("benefit_amount", Float, nullable=False),
    Column("start_date", Date, nullable=False),
    Column("end_date", Date, nullable=True),  # NULL: still insured or still claiming
    **_TABLE_OPTIONS,
)

mr = MetaData()
Table(
    "business",
    mr,
    Column("credit_code", String(_CREDIT), primary_key=True),
    Column("name", String(128), nullable=False),
    _id_number_column("legal_rep_id_number"),
    Column("type", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("registered_capital", Float, nullable=False),
    Column("established_on", Date, nullable=False),
    Column("address", String(200), nullable=False),
    Column("district", String(32), nullable=False),
    **_TABLE_OPTIONS,
)

health = MetaData()
Table(
    "medical_insurance",
    health,
    _surrogate_id(),
    _id_number_column(),
    Column("scheme", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("start_date", Date, nullable=False),
    **_TABLE_OPTIONS,
)
Table(
    "vaccination",
    health,
    _surrogate_id(),
    _id_number_column(),
    Column("vaccine", String(64), nullable=False),
    Column("dose", Integer, nullable=False),
    Column("vaccinated_on", Date, nullable=False),
    Column("site", String(128), nullable=False),
    **_TABLE_OPTIONS,
)

civil = MetaData()
Table(
    "subsistence_case",
    civil,
    Column("case_id", String(16), primary_key=True),
    _id_number_column("applicant_id_number"),
    Column("household_id", String(_HOUSEHOLD), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("monthly_allowance", Float, nullable=True),  # NULL until a grant is decided
    Column("applied_on", Date, nullable=False),
    Column("decided_on", Date, nullable=True),  # NULL while the application is pending
    Column("street_office", String(64), nullable=False),
    **_TABLE_OPTIONS,
)

# Insertion order is the documented department order, so callers iterating it are stable.
DEPARTMENT_TABLES: dict[str, MetaData] = {
    "psb": psb,
    "hrss": hrss,
    "mr": mr,
    "health": health,
    "civil": civil,
}
