"""Forms of the approvals app.

The decision forms (approve, modify generated from the tool's schema, reject
with a required reason) arrive with the approval queue; the rules they rely
on already hold in the models' constraints.
"""
