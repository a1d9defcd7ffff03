"""Admission of chat goals: how many run at once, and what a goal arriving when all run gets.

Policies (parameter `concurrency`):
  reject   a goal arriving while `slots` goals run or wait is rejected;
  queue    it waits its turn, first come first served, up to `max_queued` waiting goals;
  preempt  it is accepted and the oldest running goal is canceled to make room.
`slots` is the server's OLLAMA_NUM_PARALLEL, so that every goal that runs is generating on
the server rather than waiting in Ollama's own queue, where it could not be seen or bounded.
"""

import dataclasses
import itertools
import threading
from typing import Callable, List, Optional, Tuple


@dataclasses.dataclass(eq=False)
class Ticket:
    number: int
    running: bool = False
    preempted: bool = False
    on_preempt: Optional[Callable[[], None]] = None


class Admission:
    def __init__(self, policy: str, slots: int, max_queued: int) -> None:
        self.policy = policy
        self.slots = slots
        self.max_queued = max_queued
        self._tickets: List[Ticket] = []   # in arrival order
        self._numbers = itertools.count()
        self._changed = threading.Condition()

    @property
    def running(self) -> int:
        with self._changed:
            return sum(1 for t in self._tickets if t.running)

    @property
    def waiting(self) -> int:
        with self._changed:
            return sum(1 for t in self._tickets if not t.running)

    def request(self) -> Tuple[Optional[Ticket], str]:
        """A ticket for a new goal, or None and the reason it is rejected."""
        victim = None
        with self._changed:
            busy = len(self._tickets)
            if self.policy == 'reject' and busy >= self.slots:
                return None, (f'busy: {busy} chat(s) in progress and concurrency is '
                              "'reject'; retry when it ends")
            if self.policy == 'queue' and busy >= self.slots + self.max_queued:
                return None, (f'queue full: {busy - self.slots} chat(s) already waiting '
                              f'(max_queued_goals {self.max_queued})')
            if self.policy == 'preempt' and busy >= self.slots:
                victim = next((t for t in self._tickets if not t.preempted), None)
                if victim is not None:
                    victim.preempted = True
            ticket = Ticket(next(self._numbers))
            self._tickets.append(ticket)
            self._changed.notify_all()
        if victim is not None and victim.on_preempt is not None:
            victim.on_preempt()
        return ticket, ''

    def wait_turn(self, ticket: Ticket, abandoned: Callable[[], bool]) -> bool:
        """Block until the ticket may run; False when abandoned or preempted first.

        abandoned() is called without holding the admission lock: it reads the goal handle,
        whose lock rclpy holds while it calls the goal callback, which takes ours.
        """
        while True:
            gave_up = abandoned()
            with self._changed:
                if ticket.preempted or gave_up:
                    self._remove(ticket)
                    return False
                running = sum(1 for t in self._tickets if t.running)
                first_waiting = next(t for t in self._tickets if not t.running)
                if running < self.slots and first_waiting is ticket:
                    ticket.running = True
                    return True
                self._changed.wait(0.1)

    def release(self, ticket: Ticket) -> None:
        with self._changed:
            self._remove(ticket)

    def wake(self) -> None:
        """Let waiting goals re-check whether they were canceled."""
        with self._changed:
            self._changed.notify_all()

    def _remove(self, ticket: Ticket) -> None:
        if ticket in self._tickets:
            self._tickets.remove(ticket)
        self._changed.notify_all()
