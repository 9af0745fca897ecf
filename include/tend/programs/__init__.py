"""Programs: who gets which message tonight, within consent and caps.

Takes the signals of a night and gives claimed messages in the contact ledger, every loser
logged with a reason. ``registry`` loads ``programs.yaml`` (programs, caps, the send window),
``consent`` decides who may be contacted at all, ``caps`` holds the frequency caps, holdouts and
quiet hours, and ``plan`` runs a night: candidates, consent, arbitration, deferral, claim.
"""
