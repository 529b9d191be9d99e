"""HTTP connectors: the ``http.webhook`` and ``sse`` sources, the ``http.request``
transformer and the ``http`` sink.

Installed with ``pip install 'headwater[http]'`` (``httpx``, ``httpx-sse`` and
``uvicorn``). The ``headwater.http`` plugin registers these components by name
(:mod:`headwater.builtin_plugins.catalogue`): a pipeline that uses none of them imports
none of their modules, and none of these modules imports the client libraries: a
component reports the missing package when a pipeline uses it
(:func:`headwater.core.optional.require`).

URLs a pipeline sets (``http.request``'s ``url``, ``sse``'s ``url``, the ``http``
sink's ``url``) must name a host the operator's sandbox allows
(``SandboxPolicy.hosts``; loopback only by default), checked when the params are
validated and again for every request sent, after templating and on every redirect
(:mod:`._hosts`).
"""
