def main() -> int:
    print("tunedeck")
    return 0
