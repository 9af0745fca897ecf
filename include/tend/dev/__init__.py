"""Developer tools, not production paths: the demo shop, the SendGrid stand-in, previews.

``demo`` generates a deterministic demo shop (with a ``demo_truth`` table to score the signals
against), ``fake_sendgrid`` is a local HTTP server that behaves like SendGrid's v3 mail/send
(with fault injection), ``preview`` renders templates to HTML/PNG and checks them.
"""
