from cni_bridge.cli import run

if __name__ == "__main__":
    run()
