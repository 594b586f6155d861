"""The demo "synthetic city": a generated population spread over department databases.

`demo.schema` declares each department's tables, `demo.build` generates the city and
writes one database per department plus the Housing department's JSON file, and
`demo.housing_service` serves that JSON file the way a department REST API would.
Nothing here is real data: see `demo.build` for how the keys are kept out of the
range of real ID numbers and credit codes.
"""
