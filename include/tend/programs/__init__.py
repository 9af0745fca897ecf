"""Programs: who gets which message tonight, within consent and caps.

Takes a night's signals and the consent and caps state in the store (suppressions, the contact
ledger, candidates deferred on earlier nights) and gives the plan: the messages claimed in the
contact ledger (who gets which message) and the decision log, where every other candidate's fate
is recorded with a reason. ``registry`` loads ``programs.yaml``, ``consent`` decides who may be
contacted at all, ``caps`` holds the holdouts and quiet hours, and ``plan`` runs the night.
"""
