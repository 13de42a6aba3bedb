"""A Faust app over tickflow's log: failures per workflow per minute, and a compensation run for each failed order.

Run it (README, "Your own processors with Faust"), from the checkout after ``make install``::

    .venv/bin/tickflow up --app examples.faust_failures.workflows:registry &
    .venv/bin/python -m examples.faust_failures

The first command starts the local broker and tickflow's roles hosting this example's workflows; the second starts
some orders (a few are declined and fail) and runs the Faust worker of ``app.py``, which prints each workflow's
failures per minute as they change and starts a ``refund`` run for every failed ``checkout`` run.
"""
