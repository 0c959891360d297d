"""The operators' panel: piccolo-admin behind a small ASGI host.

- ``app``: the piccolo-admin wiring, one TableConfig per table;
- ``auth``: operators, their sessions and MFA;
- ``views``: the admin's own views of the tables (secret-free);
- ``forms``: the superuser's credential-secret form;
- ``audit``: the audit log and the middleware that writes it;
- ``asgi``: the host app `make run` serves (security headers, allowed hosts).
"""
