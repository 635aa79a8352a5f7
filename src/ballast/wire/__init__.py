"""Messages between the control plane and the data plane, one frozen type each, imported by both sides.

The control plane answers with `registry.Snapshot` (what traffic components apply) and
`assignments.Assignments` (what a node runs); agents and gateways send `reports` (registration, instance
status with drain reports, acknowledgements). Each type has `to_json`/`from_json`, and the defaults both sides
rely on (grace periods, drain settings, health-check timing) are written here once. This is the lowest
layer: it imports nothing of Ballast but the text rules in `text`.
"""
